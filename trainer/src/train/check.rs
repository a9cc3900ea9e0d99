//! `infinity train CONFIG --check`: what a run checks before its first step, without training,
//! joining a group or writing anything: the dataset (with checksums), the model it implies, the batch
//! split for a world size, the validation data, the sample preview's tokenizer, the device, and the
//! weights the run would start from (a checkpoint to resume, `model.init_from`, or a fresh
//! initialisation). Then the run's size: tokens, FLOPs, host memory for weights and optimiser state,
//! checkpoint size. For a job about to wait in a queue for many nodes.

use std::path::Path;

use anyhow::{Context, Result};
use infinity_data::{Checksums, Dataset};

use super::config::TrainConfig;
use super::{checkpoint, compute, micro_steps, val, Preview};
use crate::model::bench::train_flops_per_token;
use crate::model::{Layout, Params};

/// Check everything `train` would for `world` ranks starting from `resume` (or fresh); one line per
/// finding, or the first error a run would stop with.
pub fn check(cfg: &TrainConfig, world: usize, resume: Option<&Path>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let ds = Dataset::open(&cfg.data.dir, Checksums::Verify)
        .with_context(|| format!("data.dir {}", cfg.data.dir.display()))?;
    let m = &ds.manifest;
    let mean_l = m.schedules.iter().map(|s| s.num_tokens()).sum::<usize>() as f64 / m.schedules.len() as f64;
    out.push(format!(
        "dataset {}: {} rows in {} shards (checksums verified), d = {}, {} schedules, {mean_l:.0} tokens per sample",
        cfg.data.dir.display(),
        ds.num_rows(),
        m.shards.len(),
        m.d,
        m.schedules.len()
    ));
    let num_classes = m.conditions.class.as_ref().map(|c| c.num_classes as usize);
    let text = m.conditions.text.as_ref().map(|t| (t.width as usize, t.max_tokens as usize));
    let mc = cfg.model_config(m.d as usize, num_classes, text)?;
    let lay = Layout::new(&mc);
    let n = lay.numel as f64;
    out.push(format!(
        "model {}: depth {}, width {}, {} heads, {:.1} M parameters",
        cfg.model.preset,
        mc.depth,
        mc.embed_dim,
        mc.num_heads,
        n / 1e6
    ));
    let accum = micro_steps(cfg, world)?;
    let b = cfg.data.global_batch as f64;
    let flops_per_token = train_flops_per_token(&mc, &m.schedules[0].hw(), text.map_or(0, |t| t.1));
    let steps = cfg.run.steps as f64;
    out.push(format!(
        "batch: {} samples per step = {world} ranks × {accum} micro-steps × {}; {:.0} tokens and {:.3e} FLOPs per step",
        cfg.data.global_batch,
        cfg.data.micro_batch,
        b * mean_l,
        b * mean_l * flops_per_token
    ));
    out.push(format!(
        "run: {} steps, {:.3e} tokens, {:.3e} training FLOPs, {:.2} epochs of the dataset",
        cfg.run.steps,
        steps * b * mean_l,
        steps * b * mean_l * flops_per_token,
        steps * b / ds.num_rows() as f64
    ));
    // f32 weights, gradients and the two AdamW moments; a checkpoint holds all but the gradients
    out.push(format!(
        "memory: {:.2} GB of weights, gradients and AdamW moments (f32) per rank without ZeRO-1; checkpoints \
         of {:.2} GB",
        16.0 * n / 1e9,
        12.0 * n / 1e9
    ));
    if let Some(v) = val::Validator::new(cfg, &mc, &ds)? {
        out.push(format!(
            "validation: {} rows of {}",
            v.rows(),
            cfg.val.dir.as_ref().map_or(String::new(), |d| d.display().to_string())
        ));
    }
    let _preview = Preview::new(cfg, &mc, &ds)?;
    let _device = compute::Compute::open(&cfg.run, &mc, &lay)?;
    out.push(format!("device: {:?} ({:?})", cfg.run.device, cfg.run.precision));
    match (resume, &cfg.model.init_from) {
        (Some(dir), _) => {
            let (_, _, state) = checkpoint::load(dir, &mc, &lay, &cfg.optim.adamw)
                .with_context(|| format!("resuming from {}", dir.display()))?;
            out.push(format!("start: resume from {} at step {}", dir.display(), state.step));
        }
        (None, Some(from)) => {
            let file = checkpoint::weights_file(from).context("model.init_from")?;
            let mut p = Params::zeros(&lay);
            let fresh = crate::model::io::init_from_weights(&file, &mc, &lay, &mut p)
                .with_context(|| format!("model.init_from {}", from.display()))?;
            out.push(format!(
                "start: weights from {} ({} tensors kept fresh or left out)",
                file.display(),
                fresh.len()
            ));
        }
        (None, None) => out.push("start: a fresh initialisation".into()),
    }
    Ok(out)
}
