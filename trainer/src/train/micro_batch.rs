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

/// What a micro-batch draws, and how strongly: the random streams are keyed by (`seed`, `step`,
/// sample id), so that a sample draws alike whatever the world size and micro-batch.
#[derive(Clone, Copy, Debug)]
pub(super) struct Draws {
    pub(super) seed: u64,
    pub(super) step: u64,
    /// Bitwise self-correction: the flip probability at the first scale and the scales it applies to.
    pub(super) p_max: f64,
    pub(super) apply_layers: usize,
    /// Condition dropout's probability.
    pub(super) cond_drop: f64,
    /// The blocks' drop path at the last block (the model's in training, 0 in evaluation).
    pub(super) drop_path_rate: f64,
}

impl Draws {
    /// A training step's draws: the config's self-correction, the model's dropout and drop path.
    pub(super) fn training(cfg: &TrainConfig, mc: &ModelConfig, step: u64) -> Draws {
        let (p_max, apply_layers) = (cfg.bsc.p_max, cfg.bsc.apply_layers);
        let (cond_drop, drop_path_rate) = (mc.cond_drop_rate, mc.drop_path_rate);
        Draws { seed: cfg.run.seed, step, p_max, apply_layers, cond_drop, drop_path_rate }
    }

    /// An evaluation's: fixed noise from `seed` at `(p_max, apply_layers)`, no condition dropout and no
    /// drop path (the model evaluated whole, as upstream's `eval()`).
    pub(super) fn evaluation(seed: u64, (p_max, apply_layers): (f64, usize)) -> Draws {
        Draws { seed, step: 0, p_max, apply_layers, cond_drop: 0.0, drop_path_rate: 0.0 }
    }
}

/// Bitwise self-correction, condition dropout and drop path for rows `rows` of `batch`, as `draws`
/// says. Self-correction runs on the dataset's schedule `tokenizer_scales` (with spatial patchify,
/// twice the transformer's, its outputs then unshuffled into tokens). With `on_device`, the latents and
/// flip keys are gathered for the device to self-correct instead.
pub(super) fn prepare(
    mc: &ModelConfig,
    m: &Manifest,
    batch: &Batch,
    rows: std::ops::Range<usize>,
    tokenizer_scales: &[(usize, usize)],
    draws: Draws,
    on_device: bool,
) -> Result<MicroBatch> {
    let Draws { seed, step, p_max, apply_layers, cond_drop, drop_path_rate } = draws;
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
                let flips = bsq::keyed_flips(key, scales, d, p_max, apply_layers);
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
