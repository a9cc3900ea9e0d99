//! `infinity train CONFIG --check`: what a run checks before its first step, without training,
//! joining a group or writing anything: the dataset (with checksums), the model it implies, the batch
//! split for a world size, the validation data, the sample preview's tokenizer, the device, and the
//! weights the run would start from (a checkpoint to resume, `model.init_from`, or a fresh
//! initialisation). Then the run's size: tokens, FLOPs, host memory for weights and optimiser state,
//! checkpoint size. For a job about to wait in a queue for many nodes.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::config::{CommBackend, DeviceChoice, Precision, TrainConfig};
use super::{checkpoint, compute, init_from, micro_steps, val, Preview, Setup};
use crate::model::memory::{device_memory, gib, largest_micro_batch, GpuStep, RUNTIME_MARGIN};
use crate::model::{Layout, ModelConfig, Params};
use infinity_data::Manifest;

/// The GPU memory a rank needs (`model::memory`), and whether it fits the GPU this check opened (an
/// error naming the micro-batch that fits when it does not: the run would stop at its first step).
fn gpu_memory(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    lay: &Layout,
    m: &Manifest,
    world: usize,
    device: Option<u64>,
) -> Result<String> {
    let longest = m.schedules.iter().max_by_key(|s| s.num_tokens()).context("the manifest lists no schedule")?;
    let sharded = cfg.dist.zero1 && world > 1;
    let step = GpuStep {
        micro_batch: cfg.data.micro_batch,
        tokens: longest.num_tokens(),
        text_tokens: m.conditions.text.as_ref().map_or(0, |t| t.max_tokens as usize),
        latent_hw: *longest.hw().last().context("a schedule without scales")?,
        bf16: cfg.run.precision == Precision::Bf16,
        recompute: cfg.run.recompute,
        // a ZeRO-1 shard is updated on the GPU over NCCL, on the host over the TCP ring
        device_optimizer: match (sharded, cfg.dist.backend) {
            (false, _) => Some(1),
            (true, CommBackend::Ring) => None,
            (true, _) => Some(world),
        },
        ema: cfg.optim.ema_decay > 0.0,
    };
    let est = device_memory(mc, lay.numel, &step);
    let mut line = format!(
        "GPU memory per rank (estimate): {est} (micro-batch {} × {} tokens{})",
        step.micro_batch,
        step.tokens,
        if step.recompute { ", recomputing blocks" } else { "" }
    );
    if !step.recompute {
        let re = device_memory(mc, lay.numel, &GpuStep { recompute: true, ..step.clone() });
        line += &format!("; {} with run.recompute = true", gib(re.total()));
    }
    let Some(total) = device else { return Ok(line) };
    let most = largest_micro_batch(mc, lay.numel, &step, total, 1 << 16);
    if most.is_some_and(|b| b >= step.micro_batch) {
        return Ok(format!("{line}; the GPU has {} (micro-batches up to {} fit)", gib(total), most.unwrap_or(0)));
    }
    let recomputed = largest_micro_batch(mc, lay.numel, &GpuStep { recompute: true, ..step.clone() }, total, 1 << 16);
    let fits = |b: Option<usize>| b.map_or("none fits".to_string(), |b| format!("up to {b} fit"));
    bail!(
        "{line}: more than the GPU's {} (less {} for the CUDA context and libraries). Micro-batches: {}; \
         with run.recompute = true {} (data.micro_batch; data.global_batch stays, by gradient accumulation)",
        gib(total),
        gib(RUNTIME_MARGIN),
        fits(most),
        fits(recomputed)
    )
}

/// Check everything `train` would for `world` ranks starting from `resume` (or fresh); one line per
/// finding, or the first error a run would stop with.
pub fn check(cfg: &TrainConfig, world: usize, resume: Option<&Path>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Setup { ds, mc, lay, mean_tokens, flops_per_token } = Setup::open(cfg)?;
    let m = &ds.manifest;
    out.push(format!(
        "dataset {}: {} rows in {} shards (checksums verified), d = {}, {} schedules, {mean_tokens:.0} tokens per sample",
        cfg.data.dir.display(),
        ds.num_rows(),
        m.shards.len(),
        m.d,
        m.schedules.len()
    ));
    let n = lay.numel as f64;
    out.push(format!(
        "model {}: depth {}, width {}, {} heads, {:.1} M parameters",
        cfg.model.preset,
        mc.depth,
        mc.embed_dim,
        mc.num_heads,
        n / 1e6
    ));
    if let Some(base) = cfg.model.mup() {
        out.push(base.describe(&mc, &lay));
    }
    let accum = micro_steps(cfg, world)?;
    let (b, steps) = (cfg.data.global_batch as f64, cfg.run.steps as f64);
    out.push(format!(
        "batch: {} samples per step = {world} ranks × {accum} micro-steps × {}; {:.0} tokens and {:.3e} FLOPs per step",
        cfg.data.global_batch,
        cfg.data.micro_batch,
        b * mean_tokens,
        b * mean_tokens * flops_per_token
    ));
    out.push(format!(
        "run: {} steps, {:.3e} tokens, {:.3e} training FLOPs, {:.2} epochs of the dataset",
        cfg.run.steps,
        steps * b * mean_tokens,
        steps * b * mean_tokens * flops_per_token,
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
        let dir = cfg.val.dir.as_ref().map_or(String::new(), |d| d.display().to_string());
        out.push(format!("validation: {} rows of {dir}", v.rows()));
    }
    let _preview = Preview::new(cfg, &mc, &ds)?;
    let device = compute::Compute::open(&cfg.run, &mc, &lay)?;
    out.push(format!("device: {:?} ({:?})", cfg.run.device, cfg.run.precision));
    if cfg.run.device != DeviceChoice::Cpu {
        out.push(gpu_memory(cfg, &mc, &lay, &ds.manifest, world, device.gpu_total_memory())?);
    }
    if let Some(dir) = resume {
        let (_, _, state) = checkpoint::load(dir, &mc, &lay, &cfg.optim.adamw)
            .with_context(|| format!("resuming from {}", dir.display()))?;
        out.push(format!("start: resume from {} at step {}", dir.display(), state.step));
    } else {
        match init_from(cfg, &mc, &lay, &mut Params::zeros(&lay))? {
            Some((file, fresh)) => out.push(format!(
                "start: weights from {} ({} tensors kept fresh or left out)",
                file.display(),
                fresh.len()
            )),
            None => out.push("start: a fresh initialisation".into()),
        }
    }
    Ok(out)
}
