//! Whether a run's training step fits its GPU, from `model::memory`'s count: `train --check` prints it
//! (keeping 1 GiB for the CUDA context and libraries), and `train` stops before its first step when the
//! step alone exceeds the GPU's memory, naming the micro-batches that fit ([`GpuTooSmall`], an exit
//! code `infinity launch` does not restart: the same step would run out of memory again). With
//! `data.micro_batch = "auto"` the run takes the largest micro-batch that fits ([`resolve_micro_batch`]).

use anyhow::{Context, Result};
use infinity_data::Manifest;

use super::config::{CommBackend, MicroBatchSize, Precision, TrainConfig};
use crate::model::memory::{device_memory, gib, largest_micro_batch, GpuStep, RUNTIME_MARGIN};
use crate::model::{Layout, ModelConfig};

/// A step that cannot fit the GPU's memory, with the micro-batches that do.
#[derive(Debug)]
pub struct GpuTooSmall(pub String);

impl std::fmt::Display for GpuTooSmall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GpuTooSmall {}

/// What a rank of `cfg` runs on its GPU among `world` ranks, `micro_batch` samples at a time: the longest
/// schedule of the dataset, its longest caption.
pub fn gpu_step(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    m: &Manifest,
    world: usize,
    micro_batch: usize,
) -> Result<GpuStep> {
    let longest = m.schedules.iter().max_by_key(|s| s.num_tokens()).context("the manifest lists no schedule")?;
    // the transformer's tokens (with spatial patchify the latents [d/4, 2H, 2W] hold as many values)
    let scales = mc.token_scales(&longest.hw());
    Ok(GpuStep {
        micro_batch,
        tokens: infinity_kernels::bsq::num_tokens(&scales),
        text_tokens: m.conditions.text.as_ref().map_or(0, |t| t.max_tokens as usize),
        latent_hw: *scales.last().context("a schedule without scales")?,
        bf16: cfg.run.precision == Precision::Bf16,
        recompute: cfg.run.recompute,
        device_optimizer: device_optimizer(cfg, crate::model::Layout::new(mc).numel, world),
        ema: cfg.optim.ema_decay > 0.0,
    })
}

/// Where a GPU rank of `world` updates `numel` parameters: AdamW on the GPU over `1/world` of them
/// (`Some(world)` under ZeRO-1, else `Some(1)`), or on the host (`None`). A ZeRO-1 shard is updated on
/// the GPU over NCCL, on the host over the TCP ring or where the last rank would own no part (as
/// `Updater::place` decides; a group whose `auto` backend falls back to the ring, some rank on a CPU,
/// is counted as over NCCL).
pub fn device_optimizer(cfg: &TrainConfig, numel: usize, world: usize) -> Option<usize> {
    match (cfg.dist.zero1 && world > 1, cfg.dist.backend) {
        (false, _) => Some(1),
        (true, CommBackend::Ring) => None,
        (true, _) if !super::zero1::every_rank_owns_a_shard(numel, world) => None,
        (true, _) => Some(world),
    }
}

/// "GPU memory per rank (estimate): …", with the figure under recomputation when the run does not
/// recompute.
pub fn describe(mc: &ModelConfig, lay: &Layout, step: &GpuStep) -> String {
    let est = device_memory(mc, lay.numel, step);
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
    line
}

/// [`describe`] and the largest micro-batch that fits a GPU of `total` bytes with `margin` left, or
/// the error naming the micro-batches that fit, with and without recomputation.
pub fn fits(mc: &ModelConfig, lay: &Layout, step: &GpuStep, total: u64, margin: u64) -> Result<String, GpuTooSmall> {
    let line = describe(mc, lay, step);
    let usable = total.saturating_sub(margin);
    let most = largest_micro_batch(mc, lay.numel, step, usable, 1 << 16);
    if let Some(most) = most.filter(|&b| b >= step.micro_batch) {
        // (the search stops at 65536 samples: a bound, not a size)
        let most = if most >= 1 << 16 {
            "any micro-batch fits".to_string()
        } else {
            format!("micro-batches up to {most} fit")
        };
        return Ok(format!("{line}; the GPU has {} ({most})", gib(total)));
    }
    let recomputed = largest_micro_batch(mc, lay.numel, &GpuStep { recompute: true, ..step.clone() }, usable, 1 << 16);
    let fit = |b: Option<usize>| b.map_or("none fits".to_string(), |b| format!("up to {b} fit"));
    let kept =
        if margin > 0 { format!(" (less {} for the CUDA context and libraries)", gib(margin)) } else { String::new() };
    let captions = if step.text_tokens > 0 { "captions count at the dataset's longest; " } else { "" };
    Err(GpuTooSmall(format!(
        "{line}: more than the GPU's {}{kept}. Micro-batches: {}; with run.recompute = true {} \
         (data.micro_batch; data.global_batch stays, by gradient accumulation). The count is a step's \
         peak ({captions}run.gpu_memory_check = false runs it anyway)",
        gib(total),
        fit(most),
        fit(recomputed)
    )))
}

/// The run's micro-batch among `world` ranks: `data.micro_batch`, or for `"auto"` the largest divisor of
/// a rank's share of `data.global_batch` whose step fits a GPU of `gpu` bytes with [`RUNTIME_MARGIN`]
/// left (the whole share without a GPU: host memory is not counted), with a line saying how it was
/// chosen. A GPU that holds no sample gets [`GpuTooSmall`] (1 with `run.gpu_memory_check = false`).
pub fn resolve_micro_batch(
    cfg: &TrainConfig,
    (mc, lay): (&ModelConfig, &Layout),
    m: &Manifest,
    world: usize,
    gpu: Option<u64>,
) -> Result<(usize, Option<String>)> {
    if let MicroBatchSize::Samples(n) = cfg.data.micro_batch {
        return Ok((n, None));
    }
    // a rank's share: the batch split over the ranks (one sample divides any share)
    let per_rank = super::micro_steps(cfg, world, 1)?;
    let Some(total) = gpu else {
        let line = format!(
            "data.micro_batch = auto: {per_rank}, a rank's share of data.global_batch (one micro-step; on the \
             CPU host memory is not counted)"
        );
        return Ok((per_rank, Some(line)));
    };
    let step = gpu_step(cfg, mc, m, world, 1)?;
    let Some(most) = largest_micro_batch(mc, lay.numel, &step, total.saturating_sub(RUNTIME_MARGIN), per_rank) else {
        if !cfg.run.gpu_memory_check {
            let line = "data.micro_batch = auto: 1 (not one sample fits by the count; run.gpu_memory_check = \
                        false tries it)";
            return Ok((1, Some(line.into())));
        }
        // not one sample: the error names what recomputation would hold
        fits(mc, lay, &step, total, RUNTIME_MARGIN)?;
        anyhow::bail!("data.micro_batch = auto: not one sample fits the GPU's {}", gib(total));
    };
    let micro = (1..=most).rev().find(|&b| per_rank.is_multiple_of(b)).unwrap_or(1);
    // (the search stops at the rank's share: more would fit where it reached it)
    let fit = match most == per_rank {
        true => "the whole share fits".to_string(),
        false => format!("up to {most} fit"),
    };
    let line = format!(
        "data.micro_batch = auto: {micro}, the largest divisor of the {per_rank} samples per rank whose step fits \
         the GPU's {} less {} ({}; {fit})",
        gib(total),
        gib(RUNTIME_MARGIN),
        crate::cli::plural(per_rank / micro, "micro-step")
    );
    Ok((micro, Some(line)))
}
