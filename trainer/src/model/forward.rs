//! The training forward pass (upstream `Infinity.forward`), saving what the backward needs.
//!
//! Dims legend: `B` batch, `L` tokens (start token included), `N = B·L`, `C` width, `H` heads,
//! `c = C/H`, `Hf` FFN width, `d` bits, `T` text tokens of the batch, `Ct` text width, `Hp` pool heads.

use infinity_kernels::act::{gelu_forward, silu_forward};
use infinity_kernels::adaln::{gated_residual_forward, modulate_forward, scale_gates};
use infinity_kernels::attention::{
    attention_forward, block_causal_segments, cross_segments, normalize_heads_forward, AttnDims,
};
use infinity_kernels::bitwise_ce::bitwise_ce;
use infinity_kernels::embedding::embedding_forward;
use infinity_kernels::linear::linear_forward;
use infinity_kernels::norm::{layernorm_forward, rmsnorm_forward};
use infinity_kernels::rope::{rope_apply, RopeTable};
use infinity_kernels::Real;

pub use super::acts::{Acts, BlockActs, TextActs};
use super::config::ModelConfig;
use super::params::{Layout, Params};

/// The conditioning inputs of a batch.
#[derive(Clone, Copy, Debug)]
pub enum Condition<'a, T> {
    /// Text features packed without padding (upstream `kv_compact`, `cu_seqlens_k`); `dropped[b]`
    /// replaces sample `b`'s features by `cfg_uncond[:len]` (classifier-free guidance dropout).
    Text { kv_compact: &'a [T], cu_seqlens: &'a [usize], dropped: &'a [bool] },
    /// Class ids; `num_classes` is the null class.
    Class { labels: &'a [usize] },
}

/// One training batch, as the model sees it.
#[derive(Clone, Copy, Debug)]
pub struct ModelInput<'a, T> {
    pub b: usize,
    /// `(h, w)` per scale.
    pub scales: &'a [(usize, usize)],
    /// 2-D RoPE table of this schedule (in its template's frame).
    pub rope: &'a RopeTable,
    /// `[B, L−1, d]` teacher-forcing inputs (from bitwise self-correction).
    pub x_wo_prefix: &'a [T],
    pub cond: Condition<'a, T>,
    /// `[B, L, d]` labels.
    pub gt_bits: &'a [u8],
    /// `[B·L]` weight of each token's mean bit loss in the total loss.
    pub token_weights: &'a [f64],
    /// Label smoothing of the bitwise cross-entropy (upstream `--ls`, default 0).
    pub label_smoothing: f64,
    /// `[depth, B, 2]` stochastic-depth factors of each block's two gated branches (self-attention,
    /// FFN) per sample: `keep / (1 − p)` ([`drop_path_factors`]); empty: no drop path (evaluation).
    pub drop_path: &'a [T],
}

impl<T> ModelInput<'_, T> {
    /// Block `blk`'s `[B, 2]` drop-path factors (none without drop path).
    pub fn block_drop_path(&self, blk: usize) -> Option<&[T]> {
        (!self.drop_path.is_empty()).then(|| &self.drop_path[blk * 2 * self.b..(blk + 1) * 2 * self.b])
    }
}

/// Upstream's stochastic depth (`drop_path_rate`, timm's `DropPath` on the self-attention and FFN
/// branches, not the cross-attention) for one sample: the block's rate grows linearly from 0 at the
/// first block to `rate` at the last (`torch.linspace(0, rate, depth)`), each branch is kept with
/// probability `1 − p` and then scaled by `1 / (1 − p)`. Returns `[depth, 2]` factors drawn from `u`
/// (uniform in `[0, 1)`, two per block); all ones when `rate` is 0.
pub fn drop_path_factors(rate: f64, depth: usize, mut u: impl FnMut() -> f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(2 * depth);
    for blk in 0..depth {
        let p = if depth > 1 { rate * blk as f64 / (depth - 1) as f64 } else { 0.0 };
        for _ in 0..2 {
            let keep = u() >= p;
            out.push(if keep { (1.0 / (1.0 - p)) as f32 } else { 0.0 });
        }
    }
    out
}

/// Split `[B, k·C]` rows into the `j`-th `[B, C]` part.
pub(crate) fn part<T: Real>(rows: &[T], b: usize, k: usize, j: usize, c: usize) -> Vec<T> {
    let mut out = Vec::new();
    part_into(&mut out, rows, b, k, j, c);
    out
}

/// The condition of `b` samples: text path (text_norm, attention pool → `cond`, `text_proj_for_ca` →
/// cross-attention context) or class embedding, then the shared and head AdaLN MLPs. Fills `a.text`,
/// `a.pool_segs`, `a.cond`, `a.cond_silu`, `a.shared_gss`, `a.head_ss`.
pub(crate) fn condition_forward<T: Real>(
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<T>,
    cond: Condition<T>,
    b: usize,
    a: &mut Acts<T>,
) {
    let c = cfg.embed_dim;
    let w = |name: &str| p.get(lay, name);
    match cond {
        Condition::Text { kv_compact, cu_seqlens, dropped } => {
            let ct = cfg.text_channels;
            let nt = cu_seqlens[b];
            assert_eq!(kv_compact.len(), nt * ct, "forward: kv_compact is not [T, Ct]");
            let mut t = a.text.take().unwrap_or_default();
            copy_into(&mut t.kv_in, kv_compact);
            t.cu.clear();
            t.cu.extend_from_slice(cu_seqlens);
            for (bi, &drop) in dropped.iter().enumerate() {
                if drop {
                    let (s, e) = (cu_seqlens[bi], cu_seqlens[bi + 1]);
                    assert!(e - s <= cfg.text_maxlen, "caption of {} tokens exceeds text_maxlen", e - s);
                    t.kv_in[s * ct..e * ct].copy_from_slice(&w("cfg_uncond")[..(e - s) * ct]);
                }
            }
            zeroed(&mut t.kv, nt * ct);
            zeroed(&mut t.kv_rstd, nt);
            rmsnorm_forward(&t.kv_in, w("text_norm.weight"), &mut t.kv, &mut t.kv_rstd, ct, cfg.norm_eps);
            // attention pool → cond_BD
            let hp = cfg.pool_heads();
            let mut pkv = vec![T::zero(); nt * 2 * c];
            linear_forward(&t.kv, w("text_proj_for_sos.ca.mat_kv.weight"), None, &mut pkv, nt, ct, 2 * c);
            part_into(&mut t.pool_k, &pkv, nt, 2, 0, c);
            part_into(&mut t.pool_v, &pkv, nt, 2, 1, c);
            add_rows(&mut t.pool_v, w("text_proj_for_sos.ca.v_bias"));
            t.pool_q = (0..b).flat_map(|_| w("text_proj_for_sos.ca.mat_q").iter().copied()).collect();
            a.pool_segs = cross_segments(1, &cu_seqlens[..=b]);
            let pdims = AttnDims { heads: hp, head_dim: c / hp, scale: 1.0 / ((c / hp) as f64).sqrt() };
            zeroed(&mut t.pool_attn, b * c);
            zeroed(&mut t.pool_lse, b * hp);
            attention_forward(&t.pool_q, &t.pool_k, &t.pool_v, &mut t.pool_attn, &mut t.pool_lse, &a.pool_segs, pdims);
            zeroed(&mut a.cond, b * c);
            linear_forward(
                &t.pool_attn,
                w("text_proj_for_sos.ca.proj.weight"),
                Some(w("text_proj_for_sos.ca.proj.bias")),
                &mut a.cond,
                b,
                c,
                c,
            );
            // cross-attention context
            zeroed(&mut t.t1, nt * c);
            linear_forward(
                &t.kv,
                w("text_proj_for_ca.0.weight"),
                Some(w("text_proj_for_ca.0.bias")),
                &mut t.t1,
                nt,
                ct,
                c,
            );
            zeroed(&mut t.t1g, nt * c);
            gelu_forward(&t.t1, &mut t.t1g);
            zeroed(&mut t.kv_ca, nt * c);
            linear_forward(
                &t.t1g,
                w("text_proj_for_ca.2.weight"),
                Some(w("text_proj_for_ca.2.bias")),
                &mut t.kv_ca,
                nt,
                c,
                c,
            );
            a.text = Some(t);
        }
        Condition::Class { labels } => {
            zeroed(&mut a.cond, b * c);
            embedding_forward(w("class_emb.weight"), labels, &mut a.cond, c, false);
        }
    }
    zeroed(&mut a.cond_silu, b * c);
    silu_forward(&a.cond, &mut a.cond_silu);
    zeroed(&mut a.shared_gss, b * 6 * c);
    linear_forward(
        &a.cond_silu,
        w("shared_ada_lin.1.weight"),
        Some(w("shared_ada_lin.1.bias")),
        &mut a.shared_gss,
        b,
        c,
        6 * c,
    );
    zeroed(&mut a.head_ss, b * 2 * c);
    linear_forward(
        &a.cond_silu,
        w("head_nm.ada_lin.1.weight"),
        Some(w("head_nm.ada_lin.1.bias")),
        &mut a.head_ss,
        b,
        c,
        2 * c,
    );
}

/// [`part`] into a reused buffer.
pub(crate) fn part_into<T: Real>(out: &mut Vec<T>, rows: &[T], b: usize, k: usize, j: usize, c: usize) {
    out.clear();
    for i in 0..b {
        out.extend_from_slice(&rows[i * k * c + j * c..i * k * c + (j + 1) * c]);
    }
}

/// Scale index of every token of `b` samples: `[B·L]`.
pub fn scale_index(b: usize, scales: &[(usize, usize)]) -> Vec<usize> {
    let one: Vec<usize> = scales.iter().enumerate().flat_map(|(s, &(h, w))| std::iter::repeat_n(s, h * w)).collect();
    (0..b).flat_map(|_| one.iter().copied()).collect()
}

/// Resize `v` to `n` zeros, keeping its allocation: activations are allocated on the first step and
/// reused after (fresh multi-megabyte buffers cost a page fault per 4 KiB on every step).
pub(crate) fn zeroed<T: Real>(v: &mut Vec<T>, n: usize) {
    v.clear();
    v.resize(n, T::zero());
}

/// Copy `src` into `dst`, keeping `dst`'s allocation.
pub(crate) fn copy_into<T: Real>(dst: &mut Vec<T>, src: &[T]) {
    dst.clear();
    dst.extend_from_slice(src);
}

/// `exp(min(scale_mul, ln 100))` per head: the cosine-attention logit scale.
pub(crate) fn attn_gain<T: Real>(scale_mul: &[T]) -> Vec<T> {
    scale_mul.iter().map(|&s| s.min(T::of(100f64.ln())).exp()).collect()
}

/// Run the model and the loss. `acts.dlogits` holds `∂loss/∂logits` for the backward.
pub fn forward<T: Real>(cfg: &ModelConfig, lay: &Layout, p: &Params<T>, inp: &ModelInput<T>) -> Acts<T> {
    let mut a = Acts::default();
    forward_into(cfg, lay, p, inp, &mut a);
    a
}

/// [`forward`] into activations from an earlier step, reusing their buffers.
pub fn forward_into<T: Real>(cfg: &ModelConfig, lay: &Layout, p: &Params<T>, inp: &ModelInput<T>, a: &mut Acts<T>) {
    let (b, c, d) = (inp.b, cfg.embed_dim, cfg.d);
    let l: usize = inp.scales.iter().map(|&(h, w)| h * w).sum();
    let n = b * l;
    let w = |name: &str| p.get(lay, name);
    assert_eq!(inp.x_wo_prefix.len(), b * (l - 1) * d, "forward: x_wo_prefix is not [B, L-1, d]");
    assert_eq!(inp.gt_bits.len(), n * d, "forward: gt_bits is not [B, L, d]");
    (a.b, a.l) = (b, l);
    a.blocks.resize_with(cfg.depth, Default::default);

    // ---- condition -------------------------------------------------------------------------
    condition_forward(cfg, lay, p, inp.cond, b, a);
    if let (Some(t), Condition::Text { cu_seqlens, .. }) = (&a.text, inp.cond) {
        debug_assert_eq!(t.cu, cu_seqlens);
        a.ca_segs = cross_segments(l, &cu_seqlens[..=b]);
    }

    // ---- input tokens: start token, word embeddings, level embedding ---------------------------
    let mut x = std::mem::take(&mut a.blocks[0].x_in);
    zeroed(&mut x, n * c);
    let mut we = vec![T::zero(); b * (l - 1) * c];
    linear_forward(inp.x_wo_prefix, w("word_embed.weight"), Some(w("word_embed.bias")), &mut we, b * (l - 1), d, c);
    let pos_start = w("pos_start");
    for bi in 0..b {
        for i in 0..c {
            x[bi * l * c + i] = a.cond[bi * c + i] + pos_start[i];
        }
        x[(bi * l + 1) * c..(bi + 1) * l * c].copy_from_slice(&we[bi * (l - 1) * c..(bi + 1) * (l - 1) * c]);
    }
    // level embedding of each token's scale, before the first block only
    embedding_forward(w("lvl_embed.weight"), &scale_index(b, inp.scales), &mut x, c, true);
    let tokens_per_scale: Vec<usize> = inp.scales.iter().map(|&(h, w)| h * w).collect();
    a.sa_segs = block_causal_segments(b, &tokens_per_scale);

    a.blocks[0].x_in = x;

    // ---- blocks ---------------------------------------------------------------------------------
    for blk in 0..cfg.depth {
        let mut s = std::mem::take(&mut a.blocks[blk]);
        let mut x_next = match a.blocks.get_mut(blk + 1) {
            Some(next) => std::mem::take(&mut next.x_in),
            None => std::mem::take(&mut a.x_out),
        };
        block_forward(cfg, lay, p, blk, a, &mut s, &mut x_next, inp);
        a.blocks[blk] = s;
        match a.blocks.get_mut(blk + 1) {
            Some(next) => next.x_in = x_next,
            None => a.x_out = x_next,
        }
    }
    let x = std::mem::take(&mut a.x_out);

    // ---- head and loss ----------------------------------------------------------------------------
    zeroed(&mut a.lnh_mean, n);
    zeroed(&mut a.lnh_rstd, n);
    zeroed(&mut a.xhat_h, n * c);
    layernorm_forward(&x, None, None, &mut a.xhat_h, &mut a.lnh_mean, &mut a.lnh_rstd, c, cfg.norm_eps);
    zeroed(&mut a.h_head, n * c);
    let (hs, hb) = (part(&a.head_ss, b, 2, 0, c), part(&a.head_ss, b, 2, 1, c));
    modulate_forward(&a.xhat_h, &hs, &hb, &mut a.h_head, l, c);
    zeroed(&mut a.logits, n * 2 * d);
    linear_forward(&a.h_head, w("head.weight"), Some(w("head.bias")), &mut a.logits, n, c, 2 * d);
    zeroed(&mut a.dlogits, n * 2 * d);
    a.ce = bitwise_ce(&a.logits, inp.gt_bits, inp.token_weights, inp.label_smoothing, d, Some(&mut a.dlogits));
    a.x_out = x;
}

/// Add a `[C]` bias to every row of `[*, C]`.
pub(crate) fn add_rows<T: Real>(x: &mut [T], bias: &[T]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += *b;
        }
    }
}

/// One block: reads `s.x_in`, fills `s`, writes the block output into `x_out`.
#[allow(clippy::too_many_arguments)]
fn block_forward<T: Real>(
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<T>,
    blk: usize,
    a: &Acts<T>,
    s: &mut BlockActs<T>,
    x_out: &mut Vec<T>,
    inp: &ModelInput<T>,
) {
    let rope = inp.rope;
    let (b, l, c, h) = (a.b, a.l, cfg.embed_dim, cfg.num_heads);
    let n = b * l;
    let w = |s: &str| p.get(lay, &format!("blocks.{blk}.{s}"));
    // gss = ada_gss + shared_ada_lin(cond): γ1, γ2, s1, s2, b1, b2
    let ada = w("ada_gss");
    copy_into(&mut s.gss, &a.shared_gss);
    for row in s.gss.chunks_exact_mut(6 * c) {
        for (v, g) in row.iter_mut().zip(ada) {
            *v += *g;
        }
    }
    if let Some(f) = inp.block_drop_path(blk) {
        scale_gates(&mut s.gss, f, 2, c, 6 * c); // γ1, γ2 of each sample: kept/(1−p) or 0
    }
    let g = |j: usize| part(&s.gss, b, 6, j, c);
    let (gamma1, gamma2, scale1, scale2, shift1, shift2) = (g(0), g(1), g(2), g(3), g(4), g(5));

    // self-attention
    zeroed(&mut s.ln1_mean, n);
    zeroed(&mut s.ln1_rstd, n);
    zeroed(&mut s.xhat1, n * c);
    layernorm_forward(&s.x_in, None, None, &mut s.xhat1, &mut s.ln1_mean, &mut s.ln1_rstd, c, cfg.norm_eps);
    zeroed(&mut s.h1, n * c);
    modulate_forward(&s.xhat1, &scale1, &shift1, &mut s.h1, l, c);
    let mut qkv = vec![T::zero(); n * 3 * c];
    linear_forward(&s.h1, w("sa.mat_qkv.weight"), None, &mut qkv, n, c, 3 * c);
    part_into(&mut s.q_raw, &qkv, n, 3, 0, c);
    part_into(&mut s.k_raw, &qkv, n, 3, 1, c);
    part_into(&mut s.v, &qkv, n, 3, 2, c);
    add_rows(&mut s.q_raw, w("sa.q_bias"));
    add_rows(&mut s.v, w("sa.v_bias"));
    let hd = c / h;
    zeroed(&mut s.q, n * c);
    zeroed(&mut s.k, n * c);
    s.q_norm = normalize_heads_forward(&s.q_raw, &mut s.q, h, hd, &attn_gain(w("sa.scale_mul_1H11")));
    s.k_norm = normalize_heads_forward(&s.k_raw, &mut s.k, h, hd, &vec![T::one(); h]);
    rope_apply(&mut s.q, rope, l, h, 0, false);
    rope_apply(&mut s.k, rope, l, h, 0, false);
    zeroed(&mut s.attn, n * c);
    zeroed(&mut s.lse, n * h);
    attention_forward(
        &s.q,
        &s.k,
        &s.v,
        &mut s.attn,
        &mut s.lse,
        &a.sa_segs,
        AttnDims { heads: h, head_dim: hd, scale: 1.0 },
    );
    zeroed(&mut s.sa_out, n * c);
    linear_forward(&s.attn, w("sa.proj.weight"), Some(w("sa.proj.bias")), &mut s.sa_out, n, c, c);
    copy_into(&mut s.x_sa, &s.x_in);
    gated_residual_forward(&mut s.x_sa, &s.sa_out, &gamma1, l, c);

    // cross-attention: x + CA(ca_norm(x), kv_ca), no gate
    copy_into(&mut s.x_ca, &s.x_sa);
    if let Some(t) = &a.text {
        let nt = t.cu[b];
        zeroed(&mut s.ca_mean, n);
        zeroed(&mut s.ca_rstd, n);
        zeroed(&mut s.ca_in, n * c);
        layernorm_forward(
            &s.x_sa,
            Some(w("ca_norm.weight")),
            Some(w("ca_norm.bias")),
            &mut s.ca_in,
            &mut s.ca_mean,
            &mut s.ca_rstd,
            c,
            cfg.norm_eps,
        );
        zeroed(&mut s.ca_q, n * c);
        linear_forward(&s.ca_in, w("ca.mat_q.weight"), Some(w("ca.mat_q.bias")), &mut s.ca_q, n, c, c);
        let mut ckv = vec![T::zero(); nt * 2 * c];
        linear_forward(&t.kv_ca, w("ca.mat_kv.weight"), None, &mut ckv, nt, c, 2 * c);
        part_into(&mut s.ca_k, &ckv, nt, 2, 0, c);
        part_into(&mut s.ca_v, &ckv, nt, 2, 1, c);
        add_rows(&mut s.ca_v, w("ca.v_bias"));
        zeroed(&mut s.ca_attn, n * c);
        zeroed(&mut s.ca_lse, n * h);
        let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 / (hd as f64).sqrt() };
        attention_forward(&s.ca_q, &s.ca_k, &s.ca_v, &mut s.ca_attn, &mut s.ca_lse, &a.ca_segs, dims);
        let mut ca_out = vec![T::zero(); n * c];
        linear_forward(&s.ca_attn, w("ca.proj.weight"), Some(w("ca.proj.bias")), &mut ca_out, n, c, c);
        for (xv, o) in s.x_ca.iter_mut().zip(&ca_out) {
            *xv += *o;
        }
    }

    // feed-forward
    zeroed(&mut s.ln2_mean, n);
    zeroed(&mut s.ln2_rstd, n);
    zeroed(&mut s.xhat2, n * c);
    layernorm_forward(&s.x_ca, None, None, &mut s.xhat2, &mut s.ln2_mean, &mut s.ln2_rstd, c, cfg.norm_eps);
    zeroed(&mut s.h2, n * c);
    modulate_forward(&s.xhat2, &scale2, &shift2, &mut s.h2, l, c);
    let hf = cfg.ffn_hidden();
    zeroed(&mut s.f1, n * hf);
    linear_forward(&s.h2, w("ffn.fc1.weight"), Some(w("ffn.fc1.bias")), &mut s.f1, n, c, hf);
    zeroed(&mut s.g, n * hf);
    gelu_forward(&s.f1, &mut s.g);
    zeroed(&mut s.f2, n * c);
    linear_forward(&s.g, w("ffn.fc2.weight"), Some(w("ffn.fc2.bias")), &mut s.f2, n, hf, c);
    copy_into(x_out, &s.x_ca);
    gated_residual_forward(x_out, &s.f2, &gamma2, l, c);
}

#[cfg(test)]
mod tests {
    use super::drop_path_factors;
    use rand::{Rng, SeedableRng};

    /// Rates linear in depth from 0, each branch dropped with its block's rate, kept ones scaled so
    /// that the expected factor is 1 (timm's `DropPath` with `scale_by_keep`).
    #[test]
    fn drop_path_rates_grow_with_depth_and_keep_the_mean() {
        let (rate, depth, draws) = (0.3, 4, 40_000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut dropped = vec![0usize; depth];
        let mut sum = vec![0.0f64; depth];
        for _ in 0..draws {
            let f = drop_path_factors(rate, depth, || rng.random::<f64>());
            for blk in 0..depth {
                for &v in &f[2 * blk..2 * blk + 2] {
                    dropped[blk] += (v == 0.0) as usize;
                    sum[blk] += v as f64;
                }
            }
        }
        for blk in 0..depth {
            let p = rate * blk as f64 / (depth - 1) as f64;
            let freq = dropped[blk] as f64 / (2 * draws) as f64;
            assert!((freq - p).abs() < 0.01, "block {blk}: dropped {freq}, rate {p}");
            assert!((sum[blk] / (2 * draws) as f64 - 1.0).abs() < 0.02, "block {blk}: mean factor");
        }
        assert_eq!(dropped[0], 0, "the first block is never dropped");
        assert!(drop_path_factors(0.0, 3, || 0.0).iter().all(|&v| v == 1.0));
        assert_eq!(drop_path_factors(0.5, 1, || 0.0), [1.0, 1.0], "one block: rate 0 (linspace(0, r, 1))");
    }
}
