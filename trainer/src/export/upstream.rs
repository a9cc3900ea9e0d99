//! What upstream's `tools/run_infinity.py` needs to load an export: its `--model_type` when the model is
//! one of its presets with the preset's settings, and the flags it cannot infer; never a guess (a wrong
//! `--pn` samples scales the model never trained on).

use std::path::Path;

use infinity_data::{Catalog, Manifest};
use serde_json::{json, Value};

use super::resolved;
use crate::model::config::PRESETS;
use crate::model::ModelConfig;

/// What upstream's loader makes of a model it has no `--model_type` for (any text model).
const BUILD_IT: &str = "build Infinity(vae, **constructor_kwargs, **inference_kwargs) and load_state_dict the weights";

/// Upstream's Infinity has no class path that takes these weights, so no upstream loader applies.
const CLASS_NOTE: &str = "a class-conditioned (VAR-style) model has no upstream loader: upstream's Infinity is \
     text-conditioned, and its class path differs (`attn.*` where these are `sa.*`, a SelfAttnBlock that does not \
     construct). This export is for this framework: a run's model.init_from, or \
     inference code that reads these names";

/// The pixel budgets of upstream's dynamic_resolution.py, whose schedules its RoPE table holds (the
/// catalog's `demo4` and `demo5` are this framework's).
const UPSTREAM_BUDGETS: [&str; 4] = ["0.06M", "0.25M", "0.60M", "1M"];

/// run_infinity.py's `--pn` choices.
const RUN_INFINITY_PN: [&str; 3] = ["0.06M", "0.25M", "1M"];

/// How upstream's `tools/run_infinity.py` loads the export in `folder`: its `--model_type` (a preset of
/// its table, which fixes the block chunks: 8 for 2b and 8b, 4 for layerNN) and the flags whose
/// defaults are not this model's (`--add_lvl_embeding_only_first_block` defaults to 0 there); `--pn`
/// and `--vae_type` only where the training dataset `m` has run_infinity's schedules and upstream's
/// VAE (`tokenizer_file`: its tokenizer, copied beside the weights). Warnings where run_infinity would
/// load or sample something else than this model: another chunking (it loads without `strict`),
/// another preset's settings, or a dataset it has no flags for.
pub(super) fn run_infinity(
    mc: &ModelConfig,
    folder: &Path,
    m: Option<&Manifest>,
    tokenizer_file: Option<&str>,
) -> (Value, Vec<String>) {
    if !mc.has_cross_attention() {
        return (json!({ "model_type": null, "note": CLASS_NOTE }), Vec::new());
    }
    // run_infinity.py's --model_type table: the upstream presets, told apart by their shape (20b is
    // infinity.py's alone: run_infinity.py has no infinity_20b)
    let shape = |c: &ModelConfig| (c.depth, c.embed_dim, c.num_heads);
    let found = PRESETS.iter().filter(|p| !matches!(**p, "tiny" | "small" | "20b")).find_map(|p| {
        let c = ModelConfig::preset(p)?;
        (shape(&c) == shape(mc)).then_some((*p, c))
    });
    let Some((preset, upstream)) = found else {
        let (depth, embed_dim, num_heads) = shape(mc);
        let note = format!(
            "depth {depth}, embed_dim {embed_dim}, num_heads {num_heads}: not one of run_infinity.py's --model_type \
             shapes; {BUILD_IT}; {}",
            build_notes(mc, m).join("; ")
        );
        return (json!({ "model_type": null, "note": note }), Vec::new());
    };
    let model_type = format!("infinity_{preset}");
    let differ = preset_differences(mc, &upstream);
    if !differ.is_empty() {
        let note = format!(
            "{model_type}'s shape, but {} where run_infinity.py's {model_type} has {}: it would build another \
             model; {BUILD_IT}; {}",
            differ.iter().map(|(k, ours, _)| format!("{k} = {ours}")).collect::<Vec<_>>().join(", "),
            differ.iter().map(|(_, _, theirs)| theirs.as_str()).collect::<Vec<_>>().join(", "),
            build_notes(mc, m).join("; ")
        );
        let warning = format!("upstream_loader.model_type is null: {note}");
        return (json!({ "model_type": null, "note": note }), vec![warning]);
    }
    let chunks = upstream.block_chunks;
    let mut args = format!(
        "--model_type {model_type} --checkpoint_type torch_shard --model_path {} --text_channels {} \
         --add_lvl_embeding_only_first_block 1 --rope2d_each_sa_layer 1 --rope2d_normalized_by_hw 2 \
         --use_bit_label 1 --apply_spatial_patchify {}",
        resolved(folder).display(),
        mc.text_channels,
        mc.apply_spatial_patchify as u8,
    );
    // what args leaves out and why (no guessing: a wrong --pn samples scales the model never trained on)
    let mut left_out = Vec::new();
    match m {
        None => left_out.push(format!(
            "no dataset of the model's was at hand, so args has no --vae_type and no --pn: add --vae_type {} if its \
             tokenizer is upstream's BSQ-VAE and the --pn of its schedules, or export again with --data DIR",
            mc.d_vae()
        )),
        Some(m) => {
            // tools/write_shards.py names upstream's VAE `bsq-vae-dN`
            if m.tokenizer.name.starts_with("bsq-vae") {
                args += &format!(" --vae_type {}", mc.d_vae());
            } else {
                let decode = match tokenizer_file {
                    Some(f) => format!("decode `infinity sample --bits` with the {f} beside the weights"),
                    None => "decode `infinity sample --bits` with that tokenizer".to_string(),
                };
                left_out.push(format!(
                    "the dataset's tokenizer `{}` is not upstream's BSQ-VAE, the only one run_infinity.py decodes \
                     with (--vae_type, --vae_path), so args has no --vae_type: sample with `infinity sample`, or \
                     {decode} (docs/training.md)",
                    m.tokenizer.name
                ));
            }
            match run_infinity_pn(m) {
                Ok(pn) => {
                    args += &format!(" --pn {pn}");
                    if let Some((template, others)) = template_without_square(m) {
                        args += &format!(" --h_div_w_template {template}");
                        left_out.push(format!(
                            "the dataset has no rows of run_infinity.py's default --h_div_w_template 1.000, which the \
                             model never trained on: args take {template}, the template of the most rows{others}"
                        ));
                    }
                }
                Err(why) => left_out.push(format!(
                    "{why}, so args has no --pn (run_infinity.py takes its schedule from --pn alone): sample with \
                     `infinity sample`, or call autoregressive_infer_cfg with a scale_schedule of config.json's \
                     data{}",
                    if mc.apply_spatial_patchify { ".transformer_schedules" } else { ".schedules" }
                )),
            }
        }
    }
    let mut warnings: Vec<String> = match m {
        Some(_) => left_out.iter().map(|w| format!("run_infinity.py: {w}")).collect(),
        None => Vec::new(), // the dataset not at hand is warned of already
    };
    if mc.block_chunks != chunks {
        let chunking = format!(
            "block_chunks = {}: run_infinity.py builds {model_type} with {chunks} chunks and loads without strict, \
             so every block weight would be missing there; export with --block-chunks {chunks}",
            mc.block_chunks
        );
        warnings.push(chunking.clone());
        left_out.insert(0, chunking); // (the note says it first: args alone would load no block)
    }
    let (ours, theirs) = (mc.text_maxlen, upstream.text_maxlen);
    if ours != theirs {
        let what = match ours < theirs {
            true => format!(
                "completes it with {} fresh rows (a caption longer than {ours} tokens, which this model never trained \
                 on, gets untrained unconditional rows there)",
                theirs - ours
            ),
            false => format!("keeps its first {theirs} rows"),
        };
        left_out.push(format!(
            "cfg_uncond has {ours} rows (text_maxlen {ours}) where {model_type} has {theirs}: its load_state_dict {what}"
        ));
    }
    // (paths of this machine's files that the export cannot know)
    let encoder = m.and_then(|m| m.conditions.text.as_ref()).map_or(String::new(), |t| format!(" `{}`", t.encoder));
    let also = format!(
        "--vae_path (the VAE checkpoint the dataset's bits were made with) and --text_encoder_ckpt (the text \
         encoder that made the dataset's features, its conditions.text.encoder{encoder}: another encoder's \
         features condition the model on what it never saw)"
    );
    let mut loader = json!({ "model_type": model_type, "block_chunks": chunks, "args": args, "also_give": also });
    if !left_out.is_empty() {
        loader["note"] = json!(left_out.join("; "));
    }
    (loader, warnings)
}

/// What else building `mc` as [`BUILD_IT`] says takes, and what stops upstream's `Infinity` building or
/// sampling it, in words: a strict load; its text pool's heads; one block chunk; a caption longer than
/// `cfg_uncond`; and of the dataset `m`, schedules upstream's RoPE table lacks and a tokenizer that is
/// not upstream's VAE.
fn build_notes(mc: &ModelConfig, m: Option<&Manifest>) -> Vec<String> {
    let mut notes = vec![
        "load with load_state_dict(weights, strict=True): upstream's Infinity.load_state_dict defaults to strict=False, \
         which loads a mismatch in part without a word"
            .to_string(),
    ];
    // (upstream's TextAttentivePool: Ct5 // 128 heads, of 64 channels past C = 4096; ours keeps one)
    let per_head = mc.pool_head_channels();
    let heads = mc.text_channels / per_head;
    if heads == 0 || !mc.embed_dim.is_multiple_of(heads) {
        notes.push(format!(
            "text_channels {}: upstream's text pool (TextAttentivePool) has text_channels // {per_head} = {heads} \
             heads, which must be at least 1 and divide embed_dim {}, so its constructor fails (this framework's \
             pool takes one head under {per_head} channels)",
            mc.text_channels, mc.embed_dim
        ));
    }
    if mc.block_chunks == 1 {
        let fix = match (2..=mc.depth).find(|k| mc.depth.is_multiple_of(*k)) {
            Some(k) => format!("export with --block-chunks {k} (a divisor of the depth, {}, above 1)", mc.depth),
            None => "a model of depth 1 has no other".to_string(),
        };
        notes.push(format!(
            "block_chunks = 1: upstream's sampler (autoregressive_infer_cfg) goes through the model's block_chunks, \
             which a model of one chunk does not have: {fix}"
        ));
    }
    notes.push(format!(
        "a caption of more than {} tokens fails under guidance there (cfg_uncond has text_maxlen = {} rows)",
        mc.text_maxlen, mc.text_maxlen
    ));
    let Some(m) = m else { return notes };
    let catalog = Catalog::upstream();
    let upstreams = |s: &infinity_data::schedule::ScaleSchedule| {
        let budget = UPSTREAM_BUDGETS.contains(&s.pixel_budget.as_str());
        let u = catalog.schedule(&s.h_div_w_template, &s.pixel_budget).ok().filter(|_| budget);
        u.map(|u| if s.spatial_patchify { u.patchified() } else { u }).is_some_and(|u| u.scales == s.scales)
    };
    if let Some(s) = m.schedules.iter().find(|s| !upstreams(s)) {
        notes.push(format!(
            "the dataset's schedule `{}` is none of upstream's: its sampler's RoPE table (rope2d_freqs_grid) holds \
             upstream's schedules alone (a KeyError there); sample with `infinity sample`",
            s.name
        ));
    }
    // (tools/write_shards.py names upstream's VAE `bsq-vae-dN`)
    if !m.tokenizer.name.starts_with("bsq-vae") {
        notes.push(format!(
            "Infinity(vae, …) reads the VAE's embed_dim and quantizer.lfq.mask, and its sampler the quantizer's \
             indices_to_codes and z_interplote_up/down: upstream's BSQ-VAE has them, and the dataset's tokenizer \
             `{}` is not it (decode `infinity sample --bits` with the tokenizer beside the weights)",
            m.tokenizer.name
        ));
    }
    notes
}

/// `(field, ours, upstream's)` for each setting of `mc` that differs from the run_infinity preset
/// `upstream`, leaving out what the export or run_infinity's flags set per model (`block_chunks`,
/// `text_channels`, `d` through `--vae_type`), what its `load_state_dict` adapts (`text_maxlen`: the
/// rows of `cfg_uncond`) and the training-only rates (`cond_drop_rate`,
/// `drop_path_rate`), which inference never reads.
fn preset_differences(mc: &ModelConfig, upstream: &ModelConfig) -> Vec<(String, String, String)> {
    let upstream = ModelConfig {
        block_chunks: mc.block_chunks,
        text_channels: mc.text_channels,
        text_maxlen: mc.text_maxlen,
        d: mc.d,
        cond_drop_rate: mc.cond_drop_rate,
        drop_path_rate: mc.drop_path_rate,
        ..upstream.clone()
    };
    if upstream == *mc {
        return Vec::new();
    }
    // field by field through serde, so a setting added to ModelConfig is compared too
    let (ours, theirs) =
        (serde_json::to_value(mc).unwrap_or_default(), serde_json::to_value(&upstream).unwrap_or_default());
    let (Some(ours), Some(theirs)) = (ours.as_object(), theirs.as_object()) else {
        return vec![("the settings".into(), "these".into(), "others".into())];
    };
    ours.iter()
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.to_string(), theirs.get(k).map_or("none".into(), Value::to_string)))
        .collect()
}

/// Where the dataset `m` has no rows of the square template (run_infinity.py's default
/// `--h_div_w_template 1.000`): the template of the most rows, and its others in words (a dataset whose
/// buckets are all empty: by its schedules).
fn template_without_square(m: &Manifest) -> Option<(String, String)> {
    let rows = m.rows_per_bucket();
    let any_rows = rows.iter().any(|&n| n > 0);
    let mut templates: Vec<(&str, u64)> = Vec::new();
    for (s, n) in m.schedules.iter().zip(rows.iter().copied().chain(std::iter::repeat(0))) {
        if any_rows && n == 0 {
            continue;
        }
        match templates.iter_mut().find(|(t, _)| *t == s.h_div_w_template) {
            Some(slot) => slot.1 += n,
            None => templates.push((&s.h_div_w_template, n)),
        }
    }
    if templates.is_empty() || templates.iter().any(|(t, _)| *t == "1.000") {
        return None;
    }
    // (the most rows, the first of equals)
    let most = templates.iter().enumerate().max_by_key(|(i, (_, n))| (*n, std::cmp::Reverse(*i))).map(|(_, t)| t.0)?;
    let others: Vec<&str> = templates.iter().map(|(t, _)| *t).filter(|t| *t != most).collect();
    let others = match others.len() {
        0 => String::new(),
        _ => format!(" (the dataset's others: {})", others.join(", ")),
    };
    Some((most.to_string(), others))
}

/// run_infinity.py's `--pn` for the schedules of `m`: their one pixel budget, when `--pn` takes it and
/// every schedule is upstream's at that budget; else why not.
fn run_infinity_pn(m: &Manifest) -> Result<String, String> {
    let mut budgets: Vec<&str> = m.schedules.iter().map(|s| s.pixel_budget.as_str()).collect();
    budgets.sort_unstable();
    budgets.dedup();
    let [budget] = budgets[..] else {
        return Err(format!("the dataset's schedules have {} pixel budgets ({})", budgets.len(), budgets.join(", ")));
    };
    if !RUN_INFINITY_PN.contains(&budget) {
        return Err(format!(
            "the dataset's pixel budget `{budget}` ({} scales) is none of run_infinity.py's --pn choices ({})",
            m.schedules.first().map_or(0, |s| s.scales.len()),
            RUN_INFINITY_PN.join(", ")
        ));
    }
    for s in &m.schedules {
        let upstream = Catalog::upstream().schedule(&s.h_div_w_template, budget).ok();
        let upstream = upstream.map(|u| if s.spatial_patchify { u.patchified() } else { u });
        if upstream.is_none_or(|u| u.scales != s.scales) {
            return Err(format!(
                "the dataset's schedule `{}` is not upstream's {budget} schedule of its template",
                s.name
            ));
        }
    }
    Ok(budget.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use infinity_data::Manifest;

    use super::run_infinity;
    use crate::export::tests::dataset;
    use crate::model::{Conditioning, ModelConfig};

    /// Upstream's loader for the preset shapes its table knows: its block chunks (a warning otherwise),
    /// spatial patchify's flags for the 8B, `--pn` and `--vae_type` from the dataset; none for other
    /// shapes, and none at all for a class-conditioned model.
    #[test]
    fn run_infinity_names_the_upstream_model_type_and_its_chunks() {
        let at = Path::new("/exports/x");
        let layer12 = ModelConfig::preset("layer12").unwrap();
        let upstream = dataset(32, "bsq-vae-d32", "0.25M", &["1.000", "0.666"]);
        let (v, warnings) = run_infinity(&layer12, at, Some(&upstream), None);
        assert_eq!((v["model_type"].as_str(), v["block_chunks"].as_u64()), (Some("infinity_layer12"), Some(4)));
        assert!(warnings.is_empty() && v.get("note").is_none(), "{warnings:?} {v}");
        let also = v["also_give"].as_str().unwrap();
        assert!(also.contains("--vae_path") && also.contains("--text_encoder_ckpt"), "{also}");
        let args = v["args"].as_str().unwrap();
        assert!(args.contains("--add_lvl_embeding_only_first_block 1"), "{args}");
        assert!(args.ends_with("--apply_spatial_patchify 0 --vae_type 32 --pn 0.25M"), "{args}");
        let two = ModelConfig { block_chunks: 2, ..layer12.clone() };
        let (v, warnings) = run_infinity(&two, at, Some(&upstream), None);
        assert!(warnings[0].contains("--block-chunks 4"), "{warnings:?}");
        assert!(v["note"].as_str().is_some_and(|n| n.starts_with("block_chunks = 2:")), "the note says it too: {v}");
        let mut eight = dataset(14, "bsq-vae-d14", "1M", &["1.000"]);
        eight.schedules = eight.schedules.iter().map(|s| s.patchified()).collect();
        let (v, _) = run_infinity(&ModelConfig { d: 56, ..ModelConfig::preset("8b").unwrap() }, at, Some(&eight), None);
        let args = v["args"].as_str().unwrap();
        assert!(args.contains("infinity_8b") && args.ends_with("--apply_spatial_patchify 1 --vae_type 14 --pn 1M"));
        // tiny is ours; 20b is upstream's, but run_infinity.py has no loader for it
        for preset in ["tiny", "20b"] {
            let (v, _) = run_infinity(&ModelConfig::preset(preset).unwrap(), at, None, None);
            let note = v["note"].as_str().unwrap();
            assert!(v["model_type"].is_null() && note.contains("load_state_dict(weights, strict=True)"), "{v}");
        }
        // what stops upstream's Infinity building or sampling one: said in the note, which travels with it
        let narrow = ModelConfig { text_channels: 32, block_chunks: 1, ..ModelConfig::preset("tiny").unwrap() };
        let ours = dataset(16, "patch-pca-bsq", "demo4", &["1.000"]);
        let note = run_infinity(&narrow, at, Some(&ours), None).0["note"].as_str().unwrap().to_string();
        for want in [
            "text_channels 32: upstream's text pool (TextAttentivePool) has text_channels // 128 = 0 heads",
            "block_chunks = 1: upstream's sampler (autoregressive_infer_cfg) goes through the model's block_chunks, \
             which a model of one chunk does not have: export with --block-chunks 2 (a divisor of the depth, 2, above 1)",
            "the dataset's schedule `1.000/demo4` is none of upstream's",
            "the dataset's tokenizer `patch-pca-bsq` is not it",
            "a caption of more than 16 tokens fails under guidance there",
        ] {
            assert!(note.contains(want), "{want}\n{note}");
        }
        let fits = ModelConfig { text_channels: 128, block_chunks: 2, ..narrow };
        let upstream = dataset(16, "bsq-vae-d16", "0.06M", &["1.000"]);
        let note = run_infinity(&fits, at, Some(&upstream), None).0["note"].as_str().unwrap().to_string();
        for left in ["text pool", "block_chunks = 1", "none of upstream's", "is not it"] {
            assert!(!note.contains(left), "{left}\n{note}");
        }
    }

    /// A class-conditioned export has no upstream loader, and config.json says so rather than the
    /// constructor route of a text model (upstream's class path builds another model).
    #[test]
    fn a_class_model_has_no_upstream_loader() {
        let class = ModelConfig {
            conditioning: Conditioning::Class { num_classes: 10 },
            ..ModelConfig::preset("layer12").unwrap()
        };
        let (v, warnings) = run_infinity(&class, Path::new("x"), None, None);
        let note = v["note"].as_str().unwrap();
        assert!(v["model_type"].is_null() && warnings.is_empty(), "{v}");
        assert!(note.contains("has no upstream loader") && note.contains("model.init_from"), "{note}");
        assert!(!note.contains("load_state_dict"), "{note}");
    }

    /// A preset's shape with another setting that fixes a shape or the forward (upstream's layer12 has
    /// mlp_ratio 4: fc1 of 3072 rows) is not run_infinity's model type; the training-only rates and
    /// the settings run_infinity takes as flags do not matter.
    #[test]
    fn a_preset_shape_with_other_settings_has_no_model_type() {
        let layer12 = ModelConfig::preset("layer12").unwrap();
        let upstream = dataset(32, "bsq-vae-d32", "0.06M", &["1.000"]);
        let at = Path::new("x");
        for (mc, field) in [
            (
                ModelConfig { mlp_ratio: 2.0, ..layer12.clone() },
                "mlp_ratio = 2.0 where run_infinity.py's infinity_layer12 has 4.0",
            ),
            (
                ModelConfig { norm_eps: 1e-5, ..layer12.clone() },
                "norm_eps = 0.00001 where run_infinity.py's infinity_layer12 has 1e-6",
            ),
            (ModelConfig { apply_spatial_patchify: true, ..layer12.clone() }, "apply_spatial_patchify = true"),
        ] {
            let (v, warnings) = run_infinity(&mc, at, Some(&upstream), None);
            let note = v["note"].as_str().unwrap();
            assert!(v["model_type"].is_null() && note.contains(field) && note.contains("load_state_dict"), "{v}");
            assert!(warnings.len() == 1 && warnings[0].contains(field), "{warnings:?}");
        }
        for mc in [
            ModelConfig { drop_path_rate: 0.0, cond_drop_rate: 0.2, ..layer12.clone() },
            ModelConfig { text_channels: 4096, block_chunks: 4, ..layer12.clone() },
        ] {
            assert_eq!(run_infinity(&mc, at, Some(&upstream), None).0["model_type"], "infinity_layer12");
        }
        // upstream's load_state_dict completes or cuts cfg_uncond: another text_maxlen loads, said
        let (v, _) = run_infinity(&ModelConfig { text_maxlen: 8, ..layer12.clone() }, at, Some(&upstream), None);
        assert_eq!(v["model_type"], "infinity_layer12", "{v}");
        let note = v["note"].as_str().unwrap();
        assert!(note.contains("cfg_uncond has 8 rows (text_maxlen 8) where infinity_layer12 has 512"), "{note}");
    }

    /// `--pn` and `--vae_type` only where the dataset has run_infinity's schedules and upstream's VAE:
    /// a warning and a note saying what to do instead otherwise, never a guess (`--pn 0.06M` ran 7
    /// scales on a model trained on 5; `--vae_type` decoded another tokenizer's bits).
    #[test]
    fn run_infinity_guesses_no_pn_and_no_vae_type() {
        let layer12 = ModelConfig::preset("layer12").unwrap();
        let at = Path::new("x");
        let loader = |m: Option<&Manifest>| {
            let (v, warnings) = run_infinity(&layer12, at, m, Some("tokenizer.safetensors"));
            (v["args"].as_str().unwrap().to_string(), v["note"].as_str().unwrap_or("").to_string(), warnings)
        };
        for (budget, scales) in [("demo5", 5), ("0.60M", 12)] {
            let (args, note, warnings) = loader(Some(&dataset(32, "bsq-vae-d32", budget, &["1.000"])));
            assert!(!args.contains("--pn") && args.contains("--vae_type 32"), "{args}");
            let want = format!("pixel budget `{budget}` ({scales} scales) is none of run_infinity.py's --pn choices");
            assert!(note.contains(&want) && note.contains("infinity sample"), "{note}");
            assert!(warnings.len() == 1 && warnings[0].contains(&want), "{warnings:?}");
        }
        let (args, note, warnings) = loader(Some(&dataset(32, "patch-pca-bsq", "0.06M", &["1.000"])));
        assert!(args.ends_with("--apply_spatial_patchify 0 --pn 0.06M"), "{args}");
        assert!(note.contains("`patch-pca-bsq` is not upstream's BSQ-VAE") && note.contains("tokenizer.safetensors"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        // a schedule named for a budget but with other scales, and two budgets in one dataset
        let mut custom = dataset(32, "bsq-vae-d32", "0.06M", &["1.000"]);
        custom.schedules[0].scales.pop();
        assert!(loader(Some(&custom)).1.contains("schedule `1.000/0.06M` is not upstream's 0.06M schedule"));
        let mut mixed = dataset(32, "bsq-vae-d32", "0.06M", &["1.000"]);
        mixed.schedules.extend(dataset(32, "bsq-vae-d32", "1M", &["0.666"]).schedules);
        assert!(loader(Some(&mixed)).1.contains("2 pixel budgets (0.06M, 1M)"));
        // no square template: run_infinity's default 1.000 would sample a shape the model never trained on
        let (args, note, _) = loader(Some(&dataset(32, "bsq-vae-d32", "0.06M", &["0.666", "1.500"])));
        assert!(args.ends_with("--pn 0.06M --h_div_w_template 0.666"), "{args}");
        assert!(note.contains("no rows of run_infinity.py's default --h_div_w_template 1.000"), "{note}");
        assert!(note.contains("the dataset's others: 1.500"), "{note}");
        let (args, _, _) = loader(Some(&dataset(32, "bsq-vae-d32", "0.06M", &["0.666", "1.000"])));
        assert!(!args.contains("--h_div_w_template"), "{args}");
        // no dataset: neither flag, said in the note (the export warns of the missing dataset itself)
        let (args, note, warnings) = loader(None);
        assert!(!args.contains("--pn") && !args.contains("--vae_type") && warnings.is_empty(), "{args}");
        assert!(note.contains("no --vae_type and no --pn"), "{note}");
    }
}
