//! One micro-batch of a loader batch in model form: bitwise self-correction (on the host, or the
//! latents and flip keys for the device to self-correct), the caption read (long or short), condition
//! dropout and the blocks' drop path, each drawn from a stream keyed by (seed, step, sample id).

use anyhow::{bail, Result};
use infinity_data::loader::plan::keyed_rng;
use infinity_data::loader::Batch;
use infinity_data::manifest::Manifest;
use infinity_data::Dataset;
use infinity_kernels::rope::RopeTable;
use infinity_kernels::{bsq, patchify};
use rand::Rng;

use super::config::TrainConfig;
use super::{STREAM_DROP, STREAM_DROP_PATH, STREAM_FLIPS, STREAM_SHORT_CAPTION};
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
    /// Bitwise self-correction: the largest flip probability (each of the first `apply_layers` scales
    /// draws its own, from 0 to `p_max` in steps of 0.01: [`infinity_kernels::bsq::keyed_flips`]).
    pub(super) p_max: f64,
    pub(super) apply_layers: usize,
    /// The chance of reading a row's short caption instead of its long one (where it has one).
    pub(super) short_cap: f64,
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
        let short_cap = cfg.data.short_cap_prob;
        Draws { seed: cfg.run.seed, step, p_max, apply_layers, short_cap, cond_drop, drop_path_rate }
    }

    /// An evaluation's: fixed noise from `seed` at `(p_max, apply_layers)`, the long captions, no
    /// condition dropout and no drop path (the model evaluated whole, as upstream's `eval()`).
    pub(super) fn evaluation(seed: u64, (p_max, apply_layers): (f64, usize)) -> Draws {
        Draws { seed, step: 0, p_max, apply_layers, short_cap: 0.0, cond_drop: 0.0, drop_path_rate: 0.0 }
    }
}

/// A bad sample `prepare` found by its id, named by the shard and row of `ds` that hold it.
pub(super) fn name_the_row(e: anyhow::Error, batch: &Batch, ds: &Dataset) -> anyhow::Error {
    match e.downcast::<infinity_data::DataError>() {
        Ok(d) => d.at_row(batch, ds).into(),
        Err(e) => e,
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
    let Draws { seed, step, p_max, apply_layers, short_cap, cond_drop, drop_path_rate } = draws;
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
            bail!(infinity_data::DataError::Sample { id, index: Some(i), detail });
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
                let short =
                    short_cap > 0.0 && keyed_rng(seed, &[STREAM_SHORT_CAPTION, step, id]).random::<f64>() < short_cap;
                let (width, dtype) = (info.width as usize, info.dtype);
                let (t, which) = match short.then(|| batch.text_short_f32(i, width, dtype)).flatten() {
                    Some(t) => (t, "short caption's text embedding"),
                    None => {
                        (batch.text_f32(i, width, dtype).expect("text datasets carry embeddings"), "text embedding")
                    }
                };
                if let Some(j) = t.iter().position(|x| !x.is_finite()) {
                    let detail = format!("its {which} holds {} at value {j}", t[j]);
                    bail!(infinity_data::DataError::Sample { id, index: Some(i), detail });
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use infinity_data::loader::{Loader, LoaderOptions};
    use infinity_data::synth::{synth, SynthOptions};
    use infinity_data::writer::WriterOptions;
    use infinity_data::{Checksums, Dataset};

    use super::*;

    /// The first batch of 48 rows of a synth dataset (each row with a short caption, "a red circle"),
    /// row 0's short caption taken out, and a tiny text model for it.
    fn fixture() -> (tempfile::TempDir, Manifest, Batch, ModelConfig) {
        let dir = tempfile::tempdir().unwrap();
        let writer = WriterOptions { overwrite: true, ..Default::default() };
        let templates = vec![("1.000".to_string(), 1.0)];
        synth(dir.path(), &SynthOptions { rows: 64, fit_rows: 32, templates, writer, ..Default::default() }).unwrap();
        let ds = Arc::new(Dataset::open(dir.path(), Checksums::Verify).unwrap());
        let m = ds.manifest.clone();
        let opts = LoaderOptions { global_batch: 48, workers: 0, ..Default::default() };
        let mut b = Loader::new(ds, opts, None).unwrap().next_batch().unwrap();
        let info = m.conditions.text.as_ref().unwrap();
        let (emb, cu) = (b.text_emb_short.as_mut().unwrap(), b.text_short_cu_seqlens.as_mut().unwrap());
        let first = cu[1];
        emb.drain(..first as usize * info.width as usize * 2);
        cu.iter_mut().skip(1).for_each(|c| *c -= first);
        let mut mc = ModelConfig::preset("tiny").unwrap();
        (mc.d, mc.text_channels, mc.text_maxlen) = (m.d as usize, info.width as usize, info.max_tokens as usize);
        (dir, m, b, mc)
    }

    /// The captions each sample read: `Some(true)` where its short one, `None` where the two are one
    /// ("a red circle" both).
    fn read_short(mc: &ModelConfig, m: &Manifest, b: &Batch, short_cap: f64, step: u64) -> Vec<Option<bool>> {
        let draws =
            Draws { seed: 3, step, p_max: 0.0, apply_layers: 0, short_cap, cond_drop: 0.0, drop_path_rate: 0.0 };
        let scales = m.schedules[b.bucket as usize].hw();
        let mb = prepare(mc, m, b, 0..b.len(), &scales, draws, false).unwrap();
        let info = m.conditions.text.as_ref().unwrap();
        let (width, dtype) = (info.width as usize, info.dtype);
        (0..b.len())
            .map(|i| {
                let kv = &mb.kv[mb.cu[i] * width..mb.cu[i + 1] * width];
                let (long, short) = (b.text_f32(i, width, dtype).unwrap(), b.text_short_f32(i, width, dtype));
                assert!(kv == long || short.as_deref() == Some(kv), "sample {i} read neither caption");
                (short.as_ref() != Some(&long)).then(|| short.as_deref() == Some(kv))
            })
            .collect()
    }

    #[test]
    fn the_short_caption_is_read_with_its_probability_and_the_long_one_where_there_is_none() {
        let (_dir, m, b, mc) = fixture();
        assert!(b.text_short_f32(0, mc.text_channels, m.conditions.text.as_ref().unwrap().dtype).is_none());
        // 0: the long captions alone; 1: the short ones wherever a row has one
        assert!(read_short(&mc, &m, &b, 0.0, 1).iter().all(|s| *s != Some(true)));
        let all = read_short(&mc, &m, &b, 1.0, 1);
        assert!(all[0] == Some(false) && all[1..].iter().all(|s| *s != Some(false)), "{all:?}");
        // 0.5: about half, drawn anew each step and alike for the same (seed, step, sample)
        let a = read_short(&mc, &m, &b, 0.5, 1);
        let (again, next) = (read_short(&mc, &m, &b, 0.5, 1), read_short(&mc, &m, &b, 0.5, 2));
        assert_eq!(a, again);
        assert_ne!(a, next);
        let (n, of) = (a.iter().filter(|s| **s == Some(true)).count(), a.iter().flatten().count());
        assert!(of >= 30 && (of / 4..=of * 3 / 4).contains(&n), "{n} of {of} read their short caption at 0.5");
    }
}
