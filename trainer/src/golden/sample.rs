//! Golden mode "sample": next-scale sampling (`model::sample`) against the reference's greedy sampler,
//! which recomputes every scale over the whole prefix instead of keeping a KV cache. Greedy (each bit
//! the likelier class of the guided logits) so that no random numbers enter: the bits must be equal,
//! the conditional logits, summed codes and each scale's input close.
//!
//! Dims: `B` samples, `L` tokens, `d` bits per token, `(H, W)` the tokenizer's last scale, `dv` its
//! channels (`d`, or `d/4` with spatial patchify).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use infinity_kernels::rope::RopeTable;
use serde_json::Value;

use super::{GoldenReport, ModelFolder, Tensors, TOL_BSQ_INPUT, TOL_FORWARD};
use crate::model::sample::{SampleCondition, SampleOptions, Sampled};
use crate::model::{Layout, ModelConfig, Params};

/// The guided logits of every bit are this far from a tie in the reference (its `min_margin`): a bit
/// of ours that differs is a wrong sampler, not rounding.
const MIN_MARGIN: f64 = 1e-3;

pub(super) fn check_sample(
    dir: &Path,
    cfg: &Value,
    schedule: &[(usize, usize)],
    (b, l, d): (usize, usize, usize),
    cuda: bool,
    r: &mut GoldenReport,
) -> Result<()> {
    let ModelFolder { mc, lay, p, kv, lens, rope, .. } = ModelFolder::open(dir, cfg, schedule, b, d)?;
    let floats = |key: &str| -> Result<Vec<f64>> {
        let v = cfg.get(key).with_context(|| format!("config.json: `{key}` missing"))?;
        let v = v.as_array().with_context(|| format!("config.json: `{key}` = {v}: expected a list"))?;
        v.iter().map(|x| x.as_f64().with_context(|| format!("config.json: `{key}` holds {x}, not a number"))).collect()
    };
    let insertion: Vec<i64> = floats("cfg_insertion_layer")?.iter().map(|&k| k as i64).collect();
    let margin = cfg.get("min_margin").and_then(Value::as_f64).context("config.json: `min_margin` missing")?;
    ensure!(
        margin >= MIN_MARGIN,
        "config.json: min_margin = {margin:e}: a bit of the reference within {MIN_MARGIN:e} of a tie could round \
         either way (pick another seed)"
    );
    let o = SampleOptions { cfg: floats("cfg_list")?, cfg_insertion_layer: insertion, ..SampleOptions::greedy() };
    // (named as config.json names them: the sampler's own messages name the command's options)
    o.check(schedule.len(), mc.depth).map_err(|e| {
        anyhow::anyhow!(
            "config.json: {}",
            e.replace("--cfg-insertion-layer", "cfg_insertion_layer").replace("--cfg", "cfg_list")
        )
    })?;
    // (upstream's sampler reads a longer cfg_list's first values, as ours does: said, since a fixture
    // written for another schedule would pass on a prefix of it)
    if o.cfg.len() > schedule.len() {
        r.notes.push(format!(
            "cfg_list: {} values for {} scales: the first {} used",
            o.cfg.len(),
            schedule.len(),
            schedule.len()
        ));
    }
    let cond = SampleCondition::Text { kv, lens, negative: None };
    // (the sampler takes the tokenizer's schedule: with spatial patchify, the transformer's doubled)
    let tokenizer = match mc.apply_spatial_patchify {
        true => infinity_kernels::patchify::tokenizer_scales(schedule),
        false => schedule.to_vec(),
    };
    let s = match cuda {
        true => gpu_sample(&mc, &lay, &p, &cond, &tokenizer, &rope, &o)?,
        false => crate::model::sample::sample(&mc, &lay, &p, &cond, &tokenizer, &rope, &o)?,
    };

    let exp = Tensors::open(&dir.join("expected.safetensors"))?;
    let ((hh, ww), dv) = (*tokenizer.last().context("empty schedule")?, mc.d_vae());
    let bits = exp.ints_shaped("bits", &[b, l, d], "[B, L, d]")?;
    let ours: Vec<i64> = s.bits.concat().iter().map(|&v| v as i64).collect();
    match ours.iter().zip(&bits).position(|(a, e)| a != e) {
        _ if ours.len() != bits.len() => {
            r.failures.push(format!("bits: {} sampled, expected {}", ours.len(), bits.len()))
        }
        Some(i) => {
            let wrong = ours.iter().zip(&bits).filter(|(a, e)| a != e).count();
            let (bi, t, j) = (i / (l * d), i / d % l, i % d);
            r.failures.push(format!("bits: {wrong} differ, the first bits[{bi}, {t}, {j}] (ours {})", ours[i]));
        }
        None => r.notes.push(format!("bits: all {} equal (reference margin {margin:.2e})", bits.len())),
    }
    let logits = exp.f32_shaped("cond_logits", &[b, l, 2 * d], "[B, L, 2d]")?;
    r.compare("cond_logits", &s.cond_logits.concat(), &logits, TOL_FORWARD);
    let codes = exp.f32_shaped("summed_codes", &[b, dv, hh, ww], "[B, dv, H, W]")?;
    r.compare("summed_codes", &s.summed_codes.concat(), &codes, TOL_BSQ_INPUT);
    let x = exp.f32_shaped("x_blc_wo_prefix", &[b, l - 1, d], "[B, L − 1, d]")?;
    r.compare("x_blc_wo_prefix", &s.x_wo_prefix.concat(), &x, TOL_BSQ_INPUT);
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_sample(
    mc: &ModelConfig,
    lay: &Layout,
    p: &Params<f32>,
    cond: &SampleCondition,
    schedule: &[(usize, usize)],
    rope: &RopeTable,
    o: &SampleOptions,
) -> Result<Sampled> {
    let mut m = crate::gpu::GpuModel::new(mc, lay, 0, false)?;
    m.upload_params(p)?;
    m.sample(cond, schedule, rope, o)
}

#[cfg(not(feature = "cuda"))]
fn gpu_sample(
    _: &ModelConfig,
    _: &Layout,
    _: &Params<f32>,
    _: &SampleCondition,
    _: &[(usize, usize)],
    _: &RopeTable,
    _: &SampleOptions,
) -> Result<Sampled> {
    anyhow::bail!(super::NOT_BUILT_WITH_CUDA)
}
