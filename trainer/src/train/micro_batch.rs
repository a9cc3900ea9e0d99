//! One micro-batch of a loader batch in model form: bitwise self-correction (on the host, or the
//! latents and flip keys for the device to self-correct), condition dropout and the blocks' drop path,
//! each drawn from a stream keyed by (seed, step, sample id).

use anyhow::{bail, Result};
use infinity_data::loader::plan::keyed_rng;
use infinity_data::loader::Batch;
use infinity_data::manifest::Manifest;
use infinity_kernels::rope::RopeTable;
use infinity_kernels::{bsq, patchify};
use rand::Rng;

use super::config::TrainConfig;
use super::{STREAM_DROP, STREAM_DROP_PATH, STREAM_FLIPS};
use crate::model::forward::drop_path_factors;
use crate::model::{Condition, Conditioning, ModelConfig, ModelInput};

/// One micro-batch in model form (owned buffers the `ModelInput` borrows).
pub(super) struct MicroBatch {
    pub(super) b: usize,
    pub(super) x_wo_prefix: Vec<f32>,
    pub(super) gt_bits: Vec<u8>,
    /// When self-correction runs on the device: `[B, d, H, W]` latents and each sample's flip key
    /// (then `x_wo_prefix` and `gt_bits` stay empty).
    pub(super) latents: Vec<f32>,
    pub(super) keys: Vec<u64>,
    pub(super) labels: Vec<usize>,
    pub(super) kv: Vec<f32>,
    pub(super) cu: Vec<usize>,
    pub(super) dropped: Vec<bool>,
    /// `[depth, B, 2]` drop-path factors of the blocks' gated branches (empty at rate 0).
    pub(super) drop_path: Vec<f32>,
}

impl MicroBatch {
    pub(super) fn input<'a>(
        &'a self,
        mc: &ModelConfig,
        scales: &'a [(usize, usize)],
        rope: &'a RopeTable,
        token_weights: &'a [f64],
        label_smoothing: f64,
    ) -> ModelInput<'a, f32> {
        let cond = match mc.conditioning {
            Conditioning::Class { .. } => Condition::Class { labels: &self.labels },
            Conditioning::Text => {
                Condition::Text { kv_compact: &self.kv, cu_seqlens: &self.cu, dropped: &self.dropped }
            }
        };
        ModelInput {
            b: self.b,
            scales,
            rope,
            x_wo_prefix: &self.x_wo_prefix,
            cond,
            gt_bits: &self.gt_bits,
            token_weights,
            label_smoothing,
            drop_path: &self.drop_path,
        }
    }
}

/// Bitwise self-correction, condition dropout (probability `cond_drop`) and drop path (at
/// `drop_path_rate`, the model's in training, 0 in evaluation) for rows `rows` of `batch`, with random
/// streams keyed by (`seed`, `step`, sample id), so that a sample draws alike whatever the world size
/// and micro-batch. Self-correction runs on the dataset's schedule `tokenizer_scales` (with spatial
/// patchify, twice the transformer's, its outputs then unshuffled into tokens). With `on_device`, the
/// latents and flip keys are gathered for the device to self-correct instead.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    cfg: &TrainConfig,
    mc: &ModelConfig,
    m: &Manifest,
    batch: &Batch,
    rows: std::ops::Range<usize>,
    tokenizer_scales: &[(usize, usize)],
    (seed, step): (u64, u64),
    (cond_drop, drop_path_rate): (f64, f64),
    on_device: bool,
) -> Result<MicroBatch> {
    let (d, scales) = (mc.d_vae(), tokenizer_scales);
    let tokens = mc.apply_spatial_patchify.then(|| mc.token_scales(scales));
    let mut mb = MicroBatch {
        b: rows.len(),
        x_wo_prefix: vec![],
        gt_bits: vec![],
        latents: vec![],
        keys: vec![],
        labels: vec![],
        kv: vec![],
        cu: vec![0],
        dropped: vec![],
        drop_path: vec![],
    };
    let mut per_sample = Vec::new(); // [B, depth, 2] drop-path factors
    for i in rows {
        let id = batch.ids[i];
        let latent = batch.latent_f32(i); // none: a dataset of bits alone
                                          // (the loader checks lengths, not values: a NaN here would quietly become labels)
        if let Some((j, x)) = latent.iter().flatten().enumerate().find(|(_, x)| !x.is_finite()) {
            let detail = format!("its latent holds {x} at value {j}");
            bail!(infinity_data::DataError::Sample { id, detail });
        }
        let key = keyed_rng(seed, &[STREAM_FLIPS, step, id]).random::<u64>();
        match latent {
            // (the device self-corrects latents: train asks it to only for datasets that store them)
            Some(latent) if on_device => {
                mb.latents.extend_from_slice(&latent);
                mb.keys.push(key);
            }
            latent => {
                let flips = bsq::keyed_flips(key, scales, d, cfg.bsc.p_max, cfg.bsc.apply_layers);
                let sc = match latent {
                    Some(latent) => bsq::self_correct(&latent, d, scales, Some(&flips)),
                    None => bsq::self_correct_stored(&batch.unpacked_bits(i, d), d, scales, Some(&flips)),
                };
                match &tokens {
                    None => {
                        mb.x_wo_prefix.extend_from_slice(&sc.x_wo_prefix);
                        mb.gt_bits.extend_from_slice(&sc.bits);
                    }
                    Some(tokens) => {
                        mb.x_wo_prefix.extend(patchify::unshuffle_tokens(&sc.x_wo_prefix, 1, d, tokens, 1));
                        mb.gt_bits.extend(patchify::unshuffle_tokens(&sc.bits, 1, d, tokens, 0));
                    }
                }
            }
        }
        if drop_path_rate > 0.0 {
            let mut rng = keyed_rng(seed, &[STREAM_DROP_PATH, step, id]);
            per_sample.extend(drop_path_factors(drop_path_rate, mc.depth, || rng.random::<f64>()));
        }
        let drop = cond_drop > 0.0 && keyed_rng(seed, &[STREAM_DROP, step, id]).random::<f64>() < cond_drop;
        match &mc.conditioning {
            Conditioning::Class { num_classes } => {
                let label = batch.class_label.as_ref().expect("class datasets carry labels")[i] as usize;
                mb.labels.push(if drop { *num_classes } else { label });
            }
            Conditioning::Text => {
                let info = m.conditions.text.as_ref().expect("text datasets declare their width");
                let t = batch.text_f32(i, info.width as usize, info.dtype).expect("text datasets carry embeddings");
                if let Some(j) = t.iter().position(|x| !x.is_finite()) {
                    let detail = format!("its text embedding holds {} at value {j}", t[j]);
                    bail!(infinity_data::DataError::Sample { id, detail });
                }
                mb.kv.extend_from_slice(&t);
                mb.cu.push(mb.cu.last().unwrap() + t.len() / info.width as usize);
                mb.dropped.push(drop);
            }
        }
    }
    // [B, depth, 2] → [depth, B, 2]: each block reads its factors as one slice
    if !per_sample.is_empty() {
        let (b, depth) = (mb.b, mc.depth);
        for blk in 0..depth {
            for bi in 0..b {
                mb.drop_path.extend_from_slice(&per_sample[(bi * depth + blk) * 2..][..2]);
            }
        }
    }
    Ok(mb)
}
