//! Next-scale sampling (upstream `autoregressive_infer_cfg`): classifier-free guidance on logits (or
//! on the hidden states after chosen blocks), per-bit top-p, a self-attention KV cache across scales with the RoPE offset of each scale (upstream's
//! non-fused path drops it, §9; here it is always applied), bilinear accumulation of the sampled codes.
//!
//! The transformer runs one scale at a time behind [`ScaleLogits`] (the CPU model here, the GPU's in
//! `gpu::sample`); guidance, sampling and the codes' accumulation are the host's, shared by both.
//!
//! Dims: `B` samples, `R` rows: `2B` with the unconditional copy (`B` without guidance at every scale),
//! `n` tokens of the current scale, `Lmax` tokens of the schedule, `C` width, `d` bits per token, `dv` the tokenizer's channels (`d`, or `d/4`
//! with spatial patchify, where each sampled scale is shuffled back to the tokenizer's twice-as-large
//! grid before its codes accumulate, and each input unshuffled from it: upstream's `pixel_shuffle`).

mod cpu;

use anyhow::{Context, Result};
use infinity_data::loader::plan::keyed_rng;
use infinity_kernels::resample::bilinear_resize;
use infinity_kernels::rope::RopeTable;
use infinity_kernels::{bsq, patchify};
use rand::Rng;

pub use cpu::CpuScales;

use super::config::{Conditioning, ModelConfig};
use super::forward::Condition;
use super::params::{Layout, Params};

#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Guidance: `logits = cfg·cond + (1 − cfg)·uncond` (1 = no guidance); one value, or one per scale
    /// (upstream's `cfg_list`).
    pub cfg: Vec<f64>,
    /// Temperature: logits are divided by it; one value, or one per scale (upstream's `tau_list`).
    pub tau: Vec<f64>,
    /// Per-bit top-p: the minority class is dropped when its probability is ≤ `1 − top_p` (0 = off).
    pub top_p: f64,
    /// Per-bit top-k (upstream's `top_k`, applied before top-p): 1 keeps each bit's likelier class (a
    /// tie keeps both, as upstream's filter by value does: drawn at even odds); 0, or 2 and more, keep
    /// both (a bit has two classes: upstream's default 900 filters nothing).
    pub top_k: usize,
    pub seed: u64,
    /// What each sample's random numbers are keyed by, with the seed and the scale: a key of its
    /// condition and its copy of it (`infinity sample`: a class's or caption's samples are the same
    /// whatever else is drawn beside them); empty: the sample's index in the batch.
    pub keys: Vec<[u64; 2]>,
    /// Where guidance applies (upstream's `cfg_insertion_layer`): `0` on the logits, `−k` on the
    /// hidden states after block `depth − k` (0-based; `k < depth`, as upstream; `cfg·cond + (1 −
    /// cfg)·uncond` into both halves, which the blocks after run on). Without `0` the logits are the
    /// conditional rows' alone.
    pub cfg_insertion_layer: Vec<i64>,
}

impl SampleOptions {
    /// The same guidance and temperature at every scale, guidance on the logits.
    pub fn uniform(cfg: f64, tau: f64, top_p: f64, seed: u64) -> SampleOptions {
        let (keys, cfg_insertion_layer) = (Vec::new(), vec![0]);
        SampleOptions { cfg: vec![cfg], tau: vec![tau], top_p, top_k: 0, seed, keys, cfg_insertion_layer }
    }

    /// Greedy sampling without guidance: every bit its likelier class (a tie: 0), no random number
    /// deciding any (top-p 0.5 drops each bit's less likely class, whose probability is at most 0.5).
    /// For comparing samplers bit for bit; set `cfg` and `cfg_insertion_layer` for guidance.
    pub fn greedy() -> SampleOptions {
        SampleOptions::uniform(1.0, 1.0, 0.5, 0)
    }

    /// Whether guidance applies to the logits (`0` in `cfg_insertion_layer`).
    fn on_logits(&self) -> bool {
        self.cfg_insertion_layer.contains(&0)
    }

    /// The blocks (0-based, in order) after which guidance applies to the hidden states, for a model of
    /// `depth` blocks.
    fn hidden_after(&self, depth: usize) -> Vec<usize> {
        let mut after: Vec<usize> =
            self.cfg_insertion_layer.iter().filter(|&&k| k < 0).map(|&k| (depth as i64 + k) as usize).collect();
        after.sort_unstable();
        after
    }

    /// Guidance and temperature at scale `si`.
    fn at(&self, si: usize) -> (f64, f64) {
        let pick = |v: &[f64]| if v.len() == 1 { v[0] } else { v[si] };
        (pick(&self.cfg), pick(&self.tau))
    }

    /// An error unless `cfg` and `tau` each hold one value or at least one per scale of a schedule of
    /// `scales` (more: the first `scales` are taken, as upstream's `cfg_list` and `tau_list` are, so a
    /// list written for a longer schedule applies), and `cfg_insertion_layer` holds distinct places of a
    /// model of `depth` blocks.
    pub fn check(&self, scales: usize, depth: usize) -> Result<(), String> {
        for (name, v) in [("cfg", &self.cfg), ("tau", &self.tau)] {
            if v.len() != 1 && v.len() < scales {
                return Err(format!(
                    "--{name}: {} values for a schedule of {scales} scales (give one, or one per scale)",
                    v.len()
                ));
            }
        }
        // (upstream's range: after any block but the first, `depth + k > 0`)
        let places = &self.cfg_insertion_layer;
        let expected = match depth {
            0 | 1 => "0 (the logits; a model of one block has no hidden states to guide)".to_string(),
            2 => "0 (the logits) or −1 (after the last of the 2 blocks)".to_string(),
            _ => format!("0 (the logits) or −1 to −{} (after block depth − k of the {depth})", depth - 1),
        };
        if places.is_empty() {
            return Err(format!("--cfg-insertion-layer: no place for guidance: expected {expected}"));
        }
        if let Some(k) = places.iter().find(|&&k| k > 0 || k <= -(depth as i64)) {
            return Err(format!("--cfg-insertion-layer {k}: expected {expected}"));
        }
        if let Some(k) = places.iter().enumerate().find(|(i, k)| places[..*i].contains(k)).map(|(_, k)| k) {
            return Err(format!("--cfg-insertion-layer: {k} is given twice"));
        }
        Ok(())
    }
}

/// What to condition on, per sample.
#[derive(Clone, Debug)]
pub enum SampleCondition {
    Class(Vec<usize>),
    /// Text features `[Σ lens, Ct]` and tokens per sample; with guidance, the unconditional rows take
    /// `negative`'s features `[tokens, Ct]` (a negative prompt, upstream's `negative_label_B_or_BLT`)
    /// instead of `cfg_uncond[:len]`.
    Text {
        kv: Vec<f32>,
        lens: Vec<usize>,
        negative: Option<Vec<f32>>,
    },
}

impl SampleCondition {
    /// Each condition `k` times in a row; `ct` is the text width.
    pub fn repeat(self, k: usize, ct: usize) -> SampleCondition {
        match self {
            SampleCondition::Class(ids) => {
                SampleCondition::Class(ids.iter().flat_map(|&i| std::iter::repeat_n(i, k)).collect())
            }
            SampleCondition::Text { kv, lens, negative } => {
                let (mut kv_k, mut lens_k, mut at) = (Vec::new(), Vec::new(), 0);
                for &len in &lens {
                    for _ in 0..k {
                        kv_k.extend_from_slice(&kv[at * ct..(at + len) * ct]);
                        lens_k.push(len);
                    }
                    at += len;
                }
                SampleCondition::Text { kv: kv_k, lens: lens_k, negative }
            }
        }
    }

    /// Per sample, [`SampleOptions::keys`]: its condition (the class id, or a hash of the caption's
    /// features and length) and how many samples of that condition came before it. `ct` is the text
    /// width.
    pub fn keys(&self, ct: usize) -> Vec<[u64; 2]> {
        let conditions: Vec<u64> = match self {
            SampleCondition::Class(ids) => ids.iter().map(|&i| i as u64).collect(),
            SampleCondition::Text { kv, lens, .. } => {
                let mut at = 0;
                let mut hash = |len: usize| {
                    let bytes: Vec<u8> = kv[at * ct..(at + len) * ct].iter().flat_map(|v| v.to_le_bytes()).collect();
                    at += len;
                    (u64::from(crc32c::crc32c(&bytes)) << 32) | len as u64
                };
                lens.iter().map(|&len| hash(len)).collect()
            }
        };
        let mut seen = std::collections::HashMap::new();
        conditions
            .into_iter()
            .map(|c| {
                let copy = seen.entry(c).or_insert(0u64);
                *copy += 1;
                [c, *copy - 1]
            })
            .collect()
    }
}

/// Result per sample: bits `[L, d]`, the same bits in the tokenizer's layout `[Lv, dv]` (its
/// schedule's tokens: with spatial patchify each scale shuffled back to twice the sides), the summed
/// codes `[dv, H, W]` for the decoder (`(H, W)` the tokenizer's last scale), and for checking against
/// the training forward the inputs `[L−1, d]` each scale was fed and the conditional logits `[L, 2d]`.
pub struct Sampled {
    pub bits: Vec<Vec<u8>>,
    pub tokenizer_bits: Vec<Vec<u8>>,
    pub summed_codes: Vec<Vec<f32>>,
    pub x_wo_prefix: Vec<Vec<f32>>,
    pub cond_logits: Vec<Vec<f32>>,
}

/// The rows the transformer runs for `B` samples: each sample's condition, then with guidance at any
/// scale its unconditional copy (the null class, or the text replaced by `cfg_uncond`); without, the
/// unconditional rows would be weighted 0 and none are run.
pub struct GuidedRows {
    /// Samples.
    pub b: usize,
    pub guided: bool,
    cond: RowsCondition,
}

enum RowsCondition {
    /// `[R]` class ids.
    Class(Vec<usize>),
    /// `[Σ lens, Ct]` features, `[R + 1]` offsets, and which rows are the unconditional copies.
    Text { kv: Vec<f32>, cu: Vec<usize>, dropped: Vec<bool> },
}

impl GuidedRows {
    /// An error when `cond` is not the model's kind of condition, its text features are not
    /// `[Σ lens, Ct]`, or it has a negative prompt without guidance or longer than `text_maxlen`.
    pub fn new(cfg: &ModelConfig, cond: &SampleCondition, o: &SampleOptions) -> Result<GuidedRows> {
        let guided = o.cfg.iter().any(|&g| g != 1.0);
        let (b, cond) = match (cond, &cfg.conditioning) {
            (SampleCondition::Class(labels), Conditioning::Class { num_classes }) => {
                let uncond = labels.iter().map(|_| *num_classes).take(if guided { labels.len() } else { 0 });
                (labels.len(), RowsCondition::Class(labels.iter().copied().chain(uncond).collect()))
            }
            (SampleCondition::Text { kv, lens, negative }, Conditioning::Text) => {
                let (total, ct): (usize, _) = (lens.iter().sum(), cfg.text_channels);
                anyhow::ensure!(
                    kv.len() == total * ct,
                    "sample: text features of {} values are not [{total}, {ct}]",
                    kv.len()
                );
                let (b, mut kv_rows, mut lens_rows) = (lens.len(), kv.clone(), lens.clone());
                let mut dropped = vec![false; b];
                match (guided, negative) {
                    (false, None) => {}
                    (false, Some(_)) => anyhow::bail!("sample: a negative prompt needs guidance (a cfg other than 1)"),
                    // the unconditional rows: each sample's features, replaced by cfg_uncond[:len]
                    (true, None) => {
                        kv_rows.extend_from_slice(kv);
                        lens_rows.extend_from_slice(lens);
                        dropped.resize(2 * b, true);
                    }
                    (true, Some(neg)) => {
                        let n = neg.len() / ct;
                        anyhow::ensure!(
                            n > 0 && neg.len() == n * ct && n <= cfg.text_maxlen,
                            "sample: the negative prompt's {} values are not [tokens ≤ {}, {ct}]",
                            neg.len(),
                            cfg.text_maxlen
                        );
                        (0..b).for_each(|_| kv_rows.extend_from_slice(neg));
                        lens_rows.resize(2 * b, n);
                        dropped.resize(2 * b, false);
                    }
                }
                let mut cu = vec![0usize];
                for &n in &lens_rows {
                    cu.push(cu.last().unwrap() + n);
                }
                (b, RowsCondition::Text { kv: kv_rows, cu, dropped })
            }
            _ => anyhow::bail!("sample: the condition does not match the model's conditioning"),
        };
        Ok(GuidedRows { b, guided, cond })
    }

    /// Rows the transformer runs: `2B` with guidance, `B` without.
    pub fn rows(&self) -> usize {
        self.b * (1 + self.guided as usize)
    }

    /// The rows' condition, as the model's forward takes it.
    pub fn condition(&self) -> Condition<'_, f32> {
        match &self.cond {
            RowsCondition::Class(labels) => Condition::Class { labels },
            RowsCondition::Text { kv, cu, dropped } => Condition::Text { kv_compact: kv, cu_seqlens: cu, dropped },
        }
    }
}

/// Guidance on the hidden states of a scale (upstream's negative `cfg_insertion_layer`): after each
/// block of `after`, the conditional rows' tokens become `cfg·cond + (1 − cfg)·uncond` and the
/// unconditional rows a copy of them.
#[derive(Clone, Copy, Debug)]
pub struct HiddenGuidance<'a> {
    pub after: &'a [usize],
    pub cfg: f64,
}

impl HiddenGuidance<'_> {
    /// None: the blocks run as they are.
    pub const NONE: HiddenGuidance<'static> = HiddenGuidance { after: &[], cfg: 1.0 };

    /// Apply it after block `blk` to the tokens `x [R, n, C]` of `R = 2B` rows (conditional first).
    pub fn apply(&self, blk: usize, x: &mut [f32]) {
        if !self.after.contains(&blk) {
            return;
        }
        let (cond, uncond) = x.split_at_mut(x.len() / 2);
        let g = self.cfg as f32;
        for (c, u) in cond.iter_mut().zip(uncond.iter_mut()) {
            *c = g * *c + (1.0 - g) * *u;
            *u = *c;
        }
    }
}

/// The transformer of sampling, one scale at a time (the CPU model: [`CpuScales`]; the GPU's:
/// `gpu::sample`).
pub trait ScaleLogits {
    /// The rows' logits `[R, n, 2d]` of scale `si`, whose `n` tokens start at token `start` of the
    /// transformer's schedule; `input [R, n, d]` the scale's input tokens (none at scale 0: the start
    /// token), `hidden` the guidance on its hidden states. Scales come in order; each one's keys and
    /// values are kept for the scales after it.
    fn logits(
        &mut self,
        si: usize,
        start: usize,
        n: usize,
        input: Option<&[f32]>,
        hidden: HiddenGuidance,
    ) -> Result<Vec<f32>>;
}

/// Sample `B` images over the tokenizer's schedule `scales` (a dataset's; the transformer's are
/// [`ModelConfig::token_scales`], which `rope` is the table of) with the CPU model.
pub fn sample(
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<f32>,
    cond: &SampleCondition,
    scales: &[(usize, usize)],
    rope: &RopeTable,
    o: &SampleOptions,
) -> Result<Sampled> {
    let rows = GuidedRows::new(cfg, cond, o)?;
    let lmax = bsq::num_tokens(&cfg.token_scales(scales));
    anyhow::ensure!(rope.num_tokens() == lmax, "sample: a RoPE table of {} tokens for {lmax}", rope.num_tokens());
    let mut net = CpuScales::new(cfg, lay, p, &rows, rope, lmax);
    sample_with(cfg, &rows, scales, o, &mut net)
}

/// Next-scale sampling with the transformer `net`: guidance, per-bit sampling (keyed by sample and
/// scale, so the CPU and the GPU draw the same numbers), accumulation of the codes and the next scale's
/// input, on the host.
pub fn sample_with(
    cfg: &ModelConfig,
    rows: &GuidedRows,
    scales: &[(usize, usize)],
    o: &SampleOptions,
    net: &mut dyn ScaleLogits,
) -> Result<Sampled> {
    o.check(scales.len(), cfg.depth).map_err(|e| anyhow::anyhow!("sample: {e}"))?;
    let (on_logits, hidden_after) = (o.on_logits(), o.hidden_after(cfg.depth));
    let (d, dv, b, guided) = (cfg.d, cfg.d_vae(), rows.b, rows.guided);
    anyhow::ensure!(o.keys.is_empty() || o.keys.len() == b, "sample: {} keys for {b} samples", o.keys.len());
    let copies = 1 + guided as usize;
    let (tokenizer_scales, scales) = (scales, &cfg.token_scales(scales)[..]);
    let lmax = bsq::num_tokens(scales);
    let (hh, ww) = *tokenizer_scales.last().context("sample: empty schedule")?;

    let mut cum = vec![vec![0.0f32; dv * hh * ww]; b];
    let mut bits_out = vec![Vec::with_capacity(lmax * d); b];
    let mut tokenizer_bits_out = vec![Vec::with_capacity(lmax * d); b];
    let mut inputs_out = vec![Vec::with_capacity(lmax * d); b];
    let mut logits_out = vec![Vec::with_capacity(lmax * 2 * d); b];
    let mut next_input: Vec<f32> = Vec::new(); // [B, n, d] input of the next scale
    let mut start = 0;
    for (si, &(sh, sw)) in scales.iter().enumerate() {
        let n = sh * sw;
        // the same input for the unconditional half
        let input: Vec<f32> = (0..copies).flat_map(|_| next_input.iter().copied()).collect();
        let (guidance, tau) = o.at(si);
        // (upstream guides only where cfg ≠ 1: a scale at 1 reads the conditional rows alone)
        let hidden = match guided && guidance != 1.0 {
            true => HiddenGuidance { after: &hidden_after, cfg: guidance },
            false => HiddenGuidance::NONE,
        };
        let logits = net.logits(si, start, n, (si > 0).then_some(&input[..]), hidden)?;
        anyhow::ensure!(logits.len() == rows.rows() * n * 2 * d, "sample: logits of scale {si} are not [R, n, 2d]");
        // (a NaN would draw bit 0 every time: a uniform image, not an error, from broken weights)
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            anyhow::bail!(
                "sample: the model's logits at scale {si} are not finite ({} at token {} of row {}): the weights \
                 are broken (a diverged run's?)",
                logits[i],
                i / (2 * d) % n,
                i / (2 * d * n)
            );
        }

        // ---- guidance, per-bit sampling ------------------------------------------------------------
        next_input.clear();
        for bi in 0..b {
            logits_out[bi].extend_from_slice(&logits[bi * n * 2 * d..(bi + 1) * n * 2 * d]);
            let mut rng = match o.keys.get(bi) {
                Some(&[condition, copy]) => keyed_rng(o.seed, &[condition, copy, si as u64]),
                None => keyed_rng(o.seed, &[bi as u64, si as u64]),
            };
            let mut bits = vec![0u8; n * d];
            for t in 0..n {
                for j in 0..d {
                    let at = |row: usize, k: usize| logits[((row * n + t) * 2 * d) + 2 * j + k] as f64;
                    // class 0's margin over class 1, guided, then tempered (the difference first: a tiny
                    // tau or a huge cfg overflows the logits themselves, not their difference)
                    let margin = |row: usize| at(row, 0) - at(row, 1);
                    let margin = match guided && on_logits {
                        true => guidance * margin(bi) + (1.0 - guidance) * margin(b + bi),
                        false => margin(bi),
                    } / tau;
                    let p1 = 1.0 / (1.0 + margin.exp());
                    // (top-k 1 filters by value, as upstream: a tie keeps both classes)
                    let filtered =
                        (o.top_k == 1 && margin != 0.0) || (o.top_p > 0.0 && p1.min(1.0 - p1) <= 1.0 - o.top_p);
                    // (by the margin's sign: one too small to move p1 off 0.5 still decides)
                    let p1 = if filtered { (margin < 0.0) as u8 as f64 } else { p1 };
                    bits[t * d + j] = (rng.random::<f64>() < p1) as u8;
                }
            }
            // accumulate the codes at full resolution, then the next scale's input
            let (vh, vw) = tokenizer_scales[si];
            // [vh·vw, dv]: the sampled bits themselves, unless patchified
            let shuffled = cfg.apply_spatial_patchify.then(|| {
                let mut v = vec![0u8; bits.len()];
                patchify::shuffle_scale(&bits, (sh, sw), dv, &mut v);
                v
            });
            let vbits = shuffled.as_deref().unwrap_or(&bits);
            let mut q = vec![0.0f32; dv * vh * vw];
            bsq::bits_to_codes(vbits, dv, &mut q);
            let mut up = vec![0.0f32; dv * hh * ww];
            bilinear_resize(&q, dv, (vh, vw), &mut up, (hh, ww));
            cum[bi].iter_mut().zip(&up).for_each(|(a, u)| *a += *u);
            bits_out[bi].extend_from_slice(&bits);
            tokenizer_bits_out[bi].extend_from_slice(vbits);
            if let (Some(&(nh, nw)), Some(&next)) = (tokenizer_scales.get(si + 1), scales.get(si + 1)) {
                let mut nxt = vec![0.0f32; dv * nh * nw];
                bilinear_resize(&cum[bi], dv, (hh, ww), &mut nxt, (nh, nw));
                let mut tokens: Vec<f32> = (0..nh * nw)
                    .flat_map(|t| (0..dv).map(move |ch| (t, ch)))
                    .map(|(t, ch)| nxt[ch * nh * nw + t])
                    .collect();
                if cfg.apply_spatial_patchify {
                    let mut unshuffled = vec![0.0f32; tokens.len()];
                    patchify::unshuffle_scale(&tokens, next, dv, &mut unshuffled);
                    tokens = unshuffled;
                }
                next_input.extend_from_slice(&tokens);
                inputs_out[bi].extend_from_slice(&tokens);
            }
        }
        start += n;
    }
    Ok(Sampled {
        bits: bits_out,
        tokenizer_bits: tokenizer_bits_out,
        summed_codes: cum,
        x_wo_prefix: inputs_out,
        cond_logits: logits_out,
    })
}
