//! Next-scale sampling (upstream `autoregressive_infer_cfg`): classifier-free guidance on logits,
//! per-bit top-p, a self-attention KV cache across scales with the RoPE offset of each scale (upstream's
//! non-fused path drops it, §9; here it is always applied), bilinear accumulation of the sampled codes.
//!
//! Dims: `B` samples, `2B` rows with the unconditional copy (`B` without guidance at every scale), `n` tokens of the current scale, `Lmax`
//! tokens of the schedule, `C` width, `d` bits per token, `dv` the tokenizer's channels (`d`, or `d/4`
//! with spatial patchify, where each sampled scale is shuffled back to the tokenizer's twice-as-large
//! grid before its codes accumulate, and each input unshuffled from it: upstream's `pixel_shuffle`).

use infinity_data::loader::plan::keyed_rng;
use infinity_kernels::act::gelu_forward;
use infinity_kernels::adaln::{gated_residual_forward, modulate_forward};
use infinity_kernels::attention::{attention_forward, normalize_heads_forward, AttnDims, Segment};
use infinity_kernels::linear::linear_forward;
use infinity_kernels::norm::layernorm_forward;
use infinity_kernels::resample::bilinear_resize;
use infinity_kernels::rope::{rope_apply, RopeTable};
use infinity_kernels::{bsq, patchify};
use rand::Rng;

use super::config::{Conditioning, ModelConfig};
use super::forward::{add_rows, attn_gain, condition_forward, part, Acts, Condition};
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
    pub seed: u64,
}

impl SampleOptions {
    /// The same guidance and temperature at every scale.
    pub fn uniform(cfg: f64, tau: f64, top_p: f64, seed: u64) -> SampleOptions {
        SampleOptions { cfg: vec![cfg], tau: vec![tau], top_p, seed }
    }

    /// Guidance and temperature at scale `si`.
    fn at(&self, si: usize) -> (f64, f64) {
        let pick = |v: &[f64]| if v.len() == 1 { v[0] } else { v[si] };
        (pick(&self.cfg), pick(&self.tau))
    }

    /// An error unless `cfg` and `tau` each hold one value or one per scale of a schedule of `scales`.
    pub fn check(&self, scales: usize) -> Result<(), String> {
        for (name, v) in [("cfg", &self.cfg), ("tau", &self.tau)] {
            if v.len() != 1 && v.len() != scales {
                return Err(format!(
                    "--{name}: {} values for a schedule of {scales} scales (give one, or one per scale)",
                    v.len()
                ));
            }
        }
        Ok(())
    }
}

/// What to condition on, per sample.
#[derive(Clone, Debug)]
pub enum SampleCondition {
    Class(Vec<usize>),
    /// Text features `[Σ lens, Ct]` and tokens per sample.
    Text {
        kv: Vec<f32>,
        lens: Vec<usize>,
    },
}

impl SampleCondition {
    /// Each condition `k` times in a row; `ct` is the text width.
    pub fn repeat(self, k: usize, ct: usize) -> SampleCondition {
        match self {
            SampleCondition::Class(ids) => {
                SampleCondition::Class(ids.iter().flat_map(|&i| std::iter::repeat_n(i, k)).collect())
            }
            SampleCondition::Text { kv, lens } => {
                let (mut kv_k, mut lens_k, mut at) = (Vec::new(), Vec::new(), 0);
                for &len in &lens {
                    for _ in 0..k {
                        kv_k.extend_from_slice(&kv[at * ct..(at + len) * ct]);
                        lens_k.push(len);
                    }
                    at += len;
                }
                SampleCondition::Text { kv: kv_k, lens: lens_k }
            }
        }
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

/// Sample `B` images over the tokenizer's schedule `scales` (a dataset's; the transformer's are
/// [`ModelConfig::token_scales`], which `rope` is the table of).
pub fn sample(
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<f32>,
    cond: &SampleCondition,
    scales: &[(usize, usize)],
    rope: &RopeTable,
    o: &SampleOptions,
) -> Sampled {
    o.check(scales.len()).unwrap_or_else(|e| panic!("sample: {e}"));
    let (c, d, dv, h) = (cfg.embed_dim, cfg.d, cfg.d_vae(), cfg.num_heads);
    let hd = c / h;
    let w = |name: &str| p.get(lay, name);
    let (tokenizer_scales, scales) = (scales, &cfg.token_scales(scales)[..]);
    let lmax: usize = scales.iter().map(|&(a, b)| a * b).sum();
    let (hh, ww) = *tokenizer_scales.last().expect("non-empty schedule");

    // ---- conditional and unconditional rows --------------------------------------------------
    // (without guidance at any scale the unconditional rows would be weighted 0: none are run)
    let guided = o.cfg.iter().any(|&g| g != 1.0);
    let copies = 1 + guided as usize;
    let mut acts: Acts<f32> = Acts::default();
    let (b, rows) = match (cond, &cfg.conditioning) {
        (SampleCondition::Class(labels), Conditioning::Class { num_classes }) => {
            let uncond = labels.iter().map(|_| *num_classes).take(if guided { labels.len() } else { 0 });
            let all: Vec<usize> = labels.iter().copied().chain(uncond).collect();
            condition_forward(cfg, lay, p, Condition::Class { labels: &all }, all.len(), &mut acts);
            (labels.len(), all.len())
        }
        (SampleCondition::Text { kv, lens }, Conditioning::Text) => {
            let ct = cfg.text_channels;
            let kv2: Vec<f32> = (0..copies).flat_map(|_| kv.iter().copied()).collect();
            let mut cu = vec![0usize];
            for &n in (0..copies).flat_map(|_| lens.iter()) {
                cu.push(cu.last().unwrap() + n);
            }
            assert_eq!(kv.len(), cu[lens.len()] * ct, "sample: text features are not [Σ lens, Ct]");
            let dropped: Vec<bool> = (0..copies * lens.len()).map(|i| i >= lens.len()).collect();
            condition_forward(
                cfg,
                lay,
                p,
                Condition::Text { kv_compact: &kv2, cu_seqlens: &cu, dropped: &dropped },
                copies * lens.len(),
                &mut acts,
            );
            (lens.len(), copies * lens.len())
        }
        _ => panic!("sample: the condition does not match the model's conditioning"),
    };
    let text = acts.text.as_ref();

    // per-block cross-attention keys/values (the context does not change across scales)
    let ca_kv: Vec<(Vec<f32>, Vec<f32>)> = match text {
        None => vec![],
        Some(t) => (0..cfg.depth)
            .map(|n| {
                let nt = t.cu[rows];
                let mut ckv = vec![0.0; nt * 2 * c];
                linear_forward(&t.kv_ca, w(&format!("blocks.{n}.ca.mat_kv.weight")), None, &mut ckv, nt, c, 2 * c);
                let (k, mut v) = (part(&ckv, nt, 2, 0, c), part(&ckv, nt, 2, 1, c));
                add_rows(&mut v, w(&format!("blocks.{n}.ca.v_bias")));
                (k, v)
            })
            .collect(),
    };
    let mut k_cache = vec![vec![0.0f32; rows * lmax * c]; cfg.depth];
    let mut v_cache = vec![vec![0.0f32; rows * lmax * c]; cfg.depth];
    let head_scale = part(&acts.head_ss, rows, 2, 0, c);
    let head_shift = part(&acts.head_ss, rows, 2, 1, c);

    let mut cum = vec![vec![0.0f32; dv * hh * ww]; b];
    let mut bits_out = vec![Vec::with_capacity(lmax * d); b];
    let mut tokenizer_bits_out = vec![Vec::with_capacity(lmax * d); b];
    let mut inputs_out = vec![Vec::with_capacity(lmax * d); b];
    let mut logits_out = vec![Vec::with_capacity(lmax * 2 * d); b];
    let mut next_input: Vec<f32> = Vec::new(); // [B, n, d] input of the next scale
    let mut start = 0;
    for (si, &(sh, sw)) in scales.iter().enumerate() {
        let n = sh * sw;
        // ---- tokens of this scale ----------------------------------------------------------------
        let mut x = vec![0.0f32; rows * n * c];
        if si == 0 {
            let pos = w("pos_start");
            for r in 0..rows {
                for i in 0..c {
                    x[r * c + i] = acts.cond[r * c + i] + pos[i];
                }
            }
        } else {
            // the same input for the unconditional half
            let inp: Vec<f32> = (0..copies).flat_map(|_| next_input.iter().copied()).collect();
            linear_forward(&inp, w("word_embed.weight"), Some(w("word_embed.bias")), &mut x, rows * n, d, c);
        }
        add_rows(&mut x, &w("lvl_embed.weight")[si * c..(si + 1) * c]);

        // ---- blocks with the KV cache ------------------------------------------------------------
        for blk in 0..cfg.depth {
            let bw = |s: &str| p.get(lay, &format!("blocks.{blk}.{s}"));
            let mut gss = acts.shared_gss.clone();
            for row in gss.chunks_exact_mut(6 * c) {
                row.iter_mut().zip(bw("ada_gss")).for_each(|(v, g)| *v += *g);
            }
            let g = |j: usize| part(&gss, rows, 6, j, c);
            let (gamma1, gamma2, scale1, scale2, shift1, shift2) = (g(0), g(1), g(2), g(3), g(4), g(5));
            let m = rows * n;
            let (mut xh, mut mean, mut rstd) = (vec![0.0; m * c], vec![0.0; m], vec![0.0; m]);
            layernorm_forward(&x, None, None, &mut xh, &mut mean, &mut rstd, c, cfg.norm_eps);
            let mut h1 = vec![0.0; m * c];
            modulate_forward(&xh, &scale1, &shift1, &mut h1, n, c);
            let mut qkv = vec![0.0; m * 3 * c];
            linear_forward(&h1, bw("sa.mat_qkv.weight"), None, &mut qkv, m, c, 3 * c);
            let (mut q_raw, k_raw, mut v) = (part(&qkv, m, 3, 0, c), part(&qkv, m, 3, 1, c), part(&qkv, m, 3, 2, c));
            add_rows(&mut q_raw, bw("sa.q_bias"));
            add_rows(&mut v, bw("sa.v_bias"));
            let (mut q, mut k) = (vec![0.0; m * c], vec![0.0; m * c]);
            normalize_heads_forward(&q_raw, &mut q, h, hd, &attn_gain(bw("sa.scale_mul_1H11")));
            normalize_heads_forward(&k_raw, &mut k, h, hd, &vec![1.0; h]);
            rope_apply(&mut q, rope, n, h, start, false);
            rope_apply(&mut k, rope, n, h, start, false);
            for r in 0..rows {
                let dst = (r * lmax + start) * c;
                k_cache[blk][dst..dst + n * c].copy_from_slice(&k[r * n * c..(r + 1) * n * c]);
                v_cache[blk][dst..dst + n * c].copy_from_slice(&v[r * n * c..(r + 1) * n * c]);
            }
            let segs: Vec<Segment> =
                (0..rows).map(|r| Segment { q0: r * n, nq: n, k0: r * lmax, nk: start + n }).collect();
            let (mut att, mut lse) = (vec![0.0; m * c], vec![0.0; m * h]);
            attention_forward(
                &q,
                &k_cache[blk],
                &v_cache[blk],
                &mut att,
                &mut lse,
                &segs,
                AttnDims { heads: h, head_dim: hd, scale: 1.0 },
            );
            let mut sa = vec![0.0; m * c];
            linear_forward(&att, bw("sa.proj.weight"), Some(bw("sa.proj.bias")), &mut sa, m, c, c);
            gated_residual_forward(&mut x, &sa, &gamma1, n, c);
            if let Some(t) = text {
                let (ck, cv) = &ca_kv[blk];
                let mut ci = vec![0.0; m * c];
                layernorm_forward(
                    &x,
                    Some(bw("ca_norm.weight")),
                    Some(bw("ca_norm.bias")),
                    &mut ci,
                    &mut mean,
                    &mut rstd,
                    c,
                    cfg.norm_eps,
                );
                let mut cq = vec![0.0; m * c];
                linear_forward(&ci, bw("ca.mat_q.weight"), Some(bw("ca.mat_q.bias")), &mut cq, m, c, c);
                let segs: Vec<Segment> =
                    (0..rows).map(|r| Segment { q0: r * n, nq: n, k0: t.cu[r], nk: t.cu[r + 1] - t.cu[r] }).collect();
                let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 / (hd as f64).sqrt() };
                attention_forward(&cq, ck, cv, &mut att, &mut lse, &segs, dims);
                linear_forward(&att, bw("ca.proj.weight"), Some(bw("ca.proj.bias")), &mut sa, m, c, c);
                x.iter_mut().zip(&sa).for_each(|(a, b)| *a += *b);
            }
            layernorm_forward(&x, None, None, &mut xh, &mut mean, &mut rstd, c, cfg.norm_eps);
            let mut h2 = vec![0.0; m * c];
            modulate_forward(&xh, &scale2, &shift2, &mut h2, n, c);
            let hf = cfg.ffn_hidden();
            let (mut f1, mut gl) = (vec![0.0; m * hf], vec![0.0; m * hf]);
            linear_forward(&h2, bw("ffn.fc1.weight"), Some(bw("ffn.fc1.bias")), &mut f1, m, c, hf);
            gelu_forward(&f1, &mut gl);
            let mut f2 = vec![0.0; m * c];
            linear_forward(&gl, bw("ffn.fc2.weight"), Some(bw("ffn.fc2.bias")), &mut f2, m, hf, c);
            gated_residual_forward(&mut x, &f2, &gamma2, n, c);
        }

        // ---- head, guidance, per-bit sampling ------------------------------------------------------
        let m = rows * n;
        let (mut xh, mut mean, mut rstd) = (vec![0.0; m * c], vec![0.0; m], vec![0.0; m]);
        layernorm_forward(&x, None, None, &mut xh, &mut mean, &mut rstd, c, cfg.norm_eps);
        let mut hm = vec![0.0; m * c];
        modulate_forward(&xh, &head_scale, &head_shift, &mut hm, n, c);
        let mut logits = vec![0.0f32; m * 2 * d];
        linear_forward(&hm, w("head.weight"), Some(w("head.bias")), &mut logits, m, c, 2 * d);
        next_input.clear();
        let (guidance, tau) = o.at(si);
        for bi in 0..b {
            logits_out[bi].extend_from_slice(&logits[bi * n * 2 * d..(bi + 1) * n * 2 * d]);
            let mut rng = keyed_rng(o.seed, &[bi as u64, si as u64]);
            let mut bits = vec![0u8; n * d];
            for t in 0..n {
                for j in 0..d {
                    let at = |row: usize, k: usize| logits[((row * n + t) * 2 * d) + 2 * j + k] as f64;
                    let mix = |k: usize| match guided {
                        true => (guidance * at(bi, k) + (1.0 - guidance) * at(b + bi, k)) / tau,
                        false => at(bi, k) / tau,
                    };
                    let p1 = 1.0 / (1.0 + (mix(0) - mix(1)).exp());
                    let p1 =
                        if o.top_p > 0.0 && p1.min(1.0 - p1) <= 1.0 - o.top_p { (p1 > 0.5) as u8 as f64 } else { p1 };
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
    Sampled {
        bits: bits_out,
        tokenizer_bits: tokenizer_bits_out,
        summed_codes: cum,
        x_wo_prefix: inputs_out,
        cond_logits: logits_out,
    }
}
