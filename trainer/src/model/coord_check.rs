//! `infinity model coord-check`: μP's coordinate check (microsoft/mup's `coord_check`). Models of
//! several widths take a few AdamW steps on one fixed batch, in the standard parametrization and in
//! μP (`model::mup`), and the size of their activations is printed per width and step. Under μP the
//! sizes, and above all their change since step 0, stay about the same as the width grows; in the
//! standard parametrization the updates of the output grow with the width (Adam moves every weight
//! by about the learning rate, and a fan_in of C sums C such moves coherently).

use anyhow::Result;
use infinity_data::Catalog;
use infinity_kernels::gradcheck::noise;

use super::forward::{forward_into, Acts};
use super::init::{init_params, InitConfig};
use super::mup::{self, MupBase};
use super::{backward, rope_for, token_weights, Condition, Conditioning, Layout, ModelConfig, ModelInput, Params};
use crate::optim::{AdamW, AdamWConfig};

#[derive(Clone, Debug)]
pub struct CoordOptions {
    /// The model at every width but the width itself (class ids or random text features per sample).
    pub config: ModelConfig,
    pub widths: Vec<usize>,
    /// The head count at every width (and in μP's base model); `None` keeps the head dimension
    /// (in the base model too).
    pub heads: Option<usize>,
    /// μP's base width; `None` checks the standard parametrization.
    pub mup_base_width: Option<usize>,
    pub steps: usize,
    pub lr: f64,
    pub batch: usize,
    /// Scale schedule (`Catalog` budget at template 1.000).
    pub budget: String,
    pub seed: u64,
}

/// RMS of the activations of one width at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct CoordRow {
    pub width: usize,
    /// Updates taken before this forward pass.
    pub step: usize,
    pub loss: f64,
    /// Block 0's input: the bit embedding plus position and scale embeddings (`[B·L, C]`).
    pub embed: f64,
    /// The last block's output (`[B·L, C]`).
    pub hidden: f64,
    /// The head's bit logits (`[B·L, 2d]`).
    pub logits: f64,
    /// `hidden` and `logits` minus their step-0 values.
    pub d_hidden: f64,
    pub d_logits: f64,
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn rms_diff(a: &[f32], b: &[f32]) -> f64 {
    (a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>() / a.len().max(1) as f64).sqrt()
}

/// Every width's rows, steps 0 ..= `o.steps`.
pub fn run(o: &CoordOptions) -> Result<Vec<CoordRow>> {
    let sched = Catalog::upstream().schedule("1.000", &o.budget)?;
    let scales = sched.hw();
    let (b, l) = (o.batch, sched.num_tokens());
    let d = o.config.d;
    // one fixed batch for every width: inputs, labels and class ids from seeded noise
    let x: Vec<f32> = noise(b * (l - 1) * d, o.seed).iter().map(|&v| v as f32 * 0.5).collect();
    let gt: Vec<u8> = noise(b * l * d, o.seed + 1).iter().map(|&v| (v > 0.0) as u8).collect();
    // class ids, or 8 tokens of random text features per sample
    let labels: Vec<usize> = match o.config.conditioning {
        Conditioning::Class { num_classes } => (0..b).map(|i| i % num_classes).collect(),
        Conditioning::Text => vec![],
    };
    let text_tokens = 8;
    let kv: Vec<f32> = noise(b * text_tokens * o.config.text_channels, o.seed + 2).iter().map(|&v| v as f32).collect();
    let cu: Vec<usize> = (0..=b).map(|i| i * text_tokens).collect();
    let dropped = vec![false; b];
    let w = token_weights(b, &scales, false);
    let mut rows = Vec::new();
    for &width in &o.widths {
        let cfg = match o.heads {
            Some(num_heads) => ModelConfig { embed_dim: width, num_heads, ..o.config.clone() },
            None => o.config.with_width(width),
        };
        cfg.validate().map_err(|e| anyhow::anyhow!("width {width}: {e}"))?;
        let mut lay = Layout::new(&cfg);
        let mut p: Params<f32> = init_params(&cfg, &lay, &InitConfig::default(), o.seed);
        if let Some(width) = o.mup_base_width {
            let heads = o.heads.unwrap_or(o.config.with_width(width).num_heads);
            let base = MupBase { width, heads: Some(heads) };
            base.validate(&cfg).map_err(|e| anyhow::anyhow!(e))?;
            mup::set_lr_mults(&mut lay, &cfg, &base);
            mup::rescale_init(&mut p, &lay, &cfg, &base);
        }
        let rope = rope_for(&cfg, &sched);
        let inp = ModelInput {
            b,
            scales: &scales,
            rope: &rope,
            x_wo_prefix: &x,
            cond: match cfg.conditioning {
                Conditioning::Class { .. } => Condition::Class { labels: &labels },
                Conditioning::Text => Condition::Text { kv_compact: &kv, cu_seqlens: &cu, dropped: &dropped },
            },
            gt_bits: &gt,
            token_weights: &w,
            label_smoothing: 0.0,
            drop_path: &[],
        };
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() }, &lay);
        let (mut acts, mut grads): (Acts<f32>, _) = (Default::default(), Params::zeros(&lay));
        let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
        for step in 0..=o.steps {
            forward_into(&cfg, &lay, &p, &inp, &mut acts);
            let (h0, z0) = first.get_or_insert_with(|| (acts.x_out.clone(), acts.logits.clone()));
            rows.push(CoordRow {
                width,
                step,
                loss: acts.ce.loss,
                embed: rms(&acts.blocks[0].x_in),
                hidden: rms(&acts.x_out),
                logits: rms(&acts.logits),
                d_hidden: rms_diff(&acts.x_out, h0),
                d_logits: rms_diff(&acts.logits, z0),
            });
            if step < o.steps {
                grads.data.fill(0.0);
                backward(&cfg, &lay, &p, &inp, &acts, &mut grads);
                opt.update(&mut p.data, &grads.data, o.lr);
            }
        }
    }
    Ok(rows)
}

/// The rows as a Markdown table.
pub fn table(rows: &[CoordRow]) -> String {
    let mut out = String::from(
        "| width | step | loss | embed RMS | hidden RMS | logits RMS | Δ hidden RMS | Δ logits RMS |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.4} | {:.3e} | {:.3e} | {:.3e} | {:.3e} | {:.3e} |\n",
            r.width, r.step, r.loss, r.embed, r.hidden, r.logits, r.d_hidden, r.d_logits
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(conditioning: Conditioning, heads: Option<usize>) -> CoordOptions {
        CoordOptions {
            config: ModelConfig { conditioning, ..ModelConfig::preset("tiny").unwrap() },
            widths: vec![64, 256],
            heads,
            mup_base_width: None,
            steps: 3,
            lr: 1e-2,
            batch: 2,
            budget: "demo5".into(),
            seed: 0,
        }
    }

    /// The check itself: over a 4× wider model the standard parametrization's hidden updates grow
    /// (about 4× at these settings) while μP's stay within a factor 1.5; μP at its base width is the
    /// standard run, row for row. Class conditioning at a fixed head dimension, and text conditioning
    /// (cross-attention, the text pool) at a fixed head count, where the head dimension grows too.
    #[test]
    fn mup_keeps_update_sizes_across_widths_and_the_standard_parametrization_does_not() {
        for (conditioning, heads) in [(Conditioning::Class { num_classes: 4 }, None), (Conditioning::Text, Some(2))] {
            check(options(conditioning, heads));
        }
    }

    fn check(mut o: CoordOptions) {
        let growth = |rows: &[CoordRow]| {
            let at = |w: usize| rows.iter().find(|r| r.width == w && r.step == 3).unwrap().clone();
            (at(256).d_hidden / at(64).d_hidden, at(256).d_logits / at(64).d_logits)
        };
        let sp = run(&o).unwrap();
        o.mup_base_width = Some(64);
        let mu = run(&o).unwrap();
        let (sp_h, sp_z) = growth(&sp);
        let (mu_h, mu_z) = growth(&mu);
        let tag = format!("{:?}", o.config.conditioning);
        console!("{tag}: Δ hidden ×{sp_h:.2} standard, ×{mu_h:.2} μP; Δ logits ×{sp_z:.2} standard, ×{mu_z:.2} μP");
        assert!(sp_h > 2.0, "{tag}, standard: Δ hidden grew {sp_h:.2}× over 4× the width");
        assert!((1.0 / 1.5..1.5).contains(&mu_h), "{tag}, μP: Δ hidden grew {mu_h:.2}×");
        assert!((1.0 / 1.5..1.5).contains(&mu_z), "{tag}, μP: Δ logits grew {mu_z:.2}× (standard: {sp_z:.2}×)");
        let base: Vec<_> = mu.iter().filter(|r| r.width == 64).collect();
        assert_eq!(base, sp.iter().filter(|r| r.width == 64).collect::<Vec<_>>(), "{tag}: μP at its base width");
    }
}
