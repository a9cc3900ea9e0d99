//! The transformer of sampling on the CPU: one scale at a time, with a self-attention KV cache of the
//! scales before it. Dims as in `sample`: `R` rows (conditional, then unconditional), `n` tokens of the
//! scale, `Lmax` tokens of the schedule, `C` width, `d` bits, `m = R·n`.

use anyhow::Result;
use infinity_kernels::act::gelu_forward;
use infinity_kernels::adaln::{gated_residual_forward, modulate_forward};
use infinity_kernels::attention::{attention_forward, normalize_heads_forward, AttnDims, Segment};
use infinity_kernels::linear::linear_forward;
use infinity_kernels::norm::layernorm_forward;
use infinity_kernels::rope::{rope_apply, RopeTable};

use super::{GuidedRows, HiddenGuidance, ScaleLogits};
use crate::model::forward::{add_rows, attn_gain, condition_forward, part, Acts};
use crate::model::{Layout, ModelConfig, Params};

/// The CPU model's [`ScaleLogits`].
pub struct CpuScales<'a> {
    cfg: &'a ModelConfig,
    lay: &'a Layout,
    p: &'a Params<f32>,
    /// The transformer's schedule's RoPE table.
    rope: &'a RopeTable,
    rows: usize,
    lmax: usize,
    /// The condition and its AdaLN inputs (`cond [R, C]`, `shared_gss [R, 6C]`, `head_ss [R, 2C]`, text).
    acts: Acts<f32>,
    /// Per block, the cross-attention's keys and values `[T, C]` (the context is the same at every scale).
    ca_kv: Vec<(Vec<f32>, Vec<f32>)>,
    /// Per block, the self-attention's keys and values `[R, Lmax, C]` of the scales so far.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
}

impl<'a> CpuScales<'a> {
    /// The condition forward of `rows` and empty caches for a schedule of `lmax` tokens.
    pub fn new(
        cfg: &'a ModelConfig,
        lay: &'a Layout,
        p: &'a Params<f32>,
        rows: &GuidedRows,
        rope: &'a RopeTable,
        lmax: usize,
    ) -> CpuScales<'a> {
        let c = cfg.embed_dim;
        let mut acts: Acts<f32> = Acts::default();
        condition_forward(cfg, lay, p, rows.condition(), rows.rows(), &mut acts);
        let ca_kv = match acts.text.as_ref() {
            None => vec![],
            Some(t) => (0..cfg.depth)
                .map(|n| {
                    let nt = t.cu[rows.rows()];
                    let mut ckv = vec![0.0; nt * 2 * c];
                    let w = p.get(lay, &format!("blocks.{n}.ca.mat_kv.weight"));
                    linear_forward(&t.kv_ca, w, None, &mut ckv, nt, c, 2 * c);
                    let (k, mut v) = (part(&ckv, nt, 2, 0, c), part(&ckv, nt, 2, 1, c));
                    add_rows(&mut v, p.get(lay, &format!("blocks.{n}.ca.v_bias")));
                    (k, v)
                })
                .collect(),
        };
        let cache = || vec![vec![0.0f32; rows.rows() * lmax * c]; cfg.depth];
        CpuScales { cfg, lay, p, rope, rows: rows.rows(), lmax, acts, ca_kv, k_cache: cache(), v_cache: cache() }
    }

    /// Block `blk` on the scale's tokens `x [m, C]` in place; its keys and values join the cache.
    fn block(&mut self, blk: usize, x: &mut [f32], start: usize, n: usize) {
        let (cfg, rows, lmax) = (self.cfg, self.rows, self.lmax);
        let (c, h) = (cfg.embed_dim, cfg.num_heads);
        let hd = c / h;
        let bw = |s: &str| self.p.get(self.lay, &format!("blocks.{blk}.{s}"));
        let mut gss = self.acts.shared_gss.clone();
        for row in gss.chunks_exact_mut(6 * c) {
            row.iter_mut().zip(bw("ada_gss")).for_each(|(v, g)| *v += *g);
        }
        let g = |j: usize| part(&gss, rows, 6, j, c);
        let (gamma1, gamma2, scale1, scale2, shift1, shift2) = (g(0), g(1), g(2), g(3), g(4), g(5));
        let m = rows * n;
        let (mut xh, mut mean, mut rstd) = (vec![0.0; m * c], vec![0.0; m], vec![0.0; m]);
        layernorm_forward(x, None, None, &mut xh, &mut mean, &mut rstd, c, cfg.norm_eps);
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
        rope_apply(&mut q, self.rope, n, h, start, false);
        rope_apply(&mut k, self.rope, n, h, start, false);
        for r in 0..rows {
            let dst = (r * lmax + start) * c;
            self.k_cache[blk][dst..dst + n * c].copy_from_slice(&k[r * n * c..(r + 1) * n * c]);
            self.v_cache[blk][dst..dst + n * c].copy_from_slice(&v[r * n * c..(r + 1) * n * c]);
        }
        let segs: Vec<Segment> = (0..rows).map(|r| Segment { q0: r * n, nq: n, k0: r * lmax, nk: start + n }).collect();
        let (mut att, mut lse) = (vec![0.0; m * c], vec![0.0; m * h]);
        let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 };
        attention_forward(&q, &self.k_cache[blk], &self.v_cache[blk], &mut att, &mut lse, &segs, dims);
        let mut sa = vec![0.0; m * c];
        linear_forward(&att, bw("sa.proj.weight"), Some(bw("sa.proj.bias")), &mut sa, m, c, c);
        gated_residual_forward(x, &sa, &gamma1, n, c);
        if let Some(t) = self.acts.text.as_ref() {
            let (ck, cv) = &self.ca_kv[blk];
            let mut ci = vec![0.0; m * c];
            let (nw, nb) = (Some(bw("ca_norm.weight")), Some(bw("ca_norm.bias")));
            layernorm_forward(x, nw, nb, &mut ci, &mut mean, &mut rstd, c, cfg.norm_eps);
            let mut cq = vec![0.0; m * c];
            linear_forward(&ci, bw("ca.mat_q.weight"), Some(bw("ca.mat_q.bias")), &mut cq, m, c, c);
            let segs: Vec<Segment> =
                (0..rows).map(|r| Segment { q0: r * n, nq: n, k0: t.cu[r], nk: t.cu[r + 1] - t.cu[r] }).collect();
            let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 / (hd as f64).sqrt() };
            attention_forward(&cq, ck, cv, &mut att, &mut lse, &segs, dims);
            linear_forward(&att, bw("ca.proj.weight"), Some(bw("ca.proj.bias")), &mut sa, m, c, c);
            x.iter_mut().zip(&sa).for_each(|(a, b)| *a += *b);
        }
        layernorm_forward(x, None, None, &mut xh, &mut mean, &mut rstd, c, cfg.norm_eps);
        let mut h2 = vec![0.0; m * c];
        modulate_forward(&xh, &scale2, &shift2, &mut h2, n, c);
        let hf = cfg.ffn_hidden();
        let (mut f1, mut gl) = (vec![0.0; m * hf], vec![0.0; m * hf]);
        linear_forward(&h2, bw("ffn.fc1.weight"), Some(bw("ffn.fc1.bias")), &mut f1, m, c, hf);
        gelu_forward(&f1, &mut gl);
        let mut f2 = vec![0.0; m * c];
        linear_forward(&gl, bw("ffn.fc2.weight"), Some(bw("ffn.fc2.bias")), &mut f2, m, hf, c);
        gated_residual_forward(x, &f2, &gamma2, n, c);
    }
}

impl ScaleLogits for CpuScales<'_> {
    fn logits(
        &mut self,
        si: usize,
        start: usize,
        n: usize,
        input: Option<&[f32]>,
        hidden: HiddenGuidance,
    ) -> Result<Vec<f32>> {
        let (cfg, rows) = (self.cfg, self.rows);
        let (c, d, m) = (cfg.embed_dim, cfg.d, rows * n);
        let w = |name: &str| self.p.get(self.lay, name);
        // ---- tokens of this scale: the start token, or the embedded input -----------------------------
        let mut x = vec![0.0f32; m * c];
        match input {
            None => {
                let pos = w("pos_start");
                for (r, row) in x.chunks_exact_mut(c).enumerate() {
                    row.iter_mut().zip(&self.acts.cond[r * c..]).zip(pos).for_each(|((x, a), b)| *x = a + b);
                }
            }
            Some(inp) => linear_forward(inp, w("word_embed.weight"), Some(w("word_embed.bias")), &mut x, m, d, c),
        }
        add_rows(&mut x, &w("lvl_embed.weight")[si * c..(si + 1) * c]);
        for blk in 0..cfg.depth {
            self.block(blk, &mut x, start, n);
            hidden.apply(blk, &mut x);
        }
        // ---- head ---------------------------------------------------------------------------------------
        let (mut xh, mut mean, mut rstd) = (vec![0.0; m * c], vec![0.0; m], vec![0.0; m]);
        layernorm_forward(&x, None, None, &mut xh, &mut mean, &mut rstd, c, cfg.norm_eps);
        let (head_scale, head_shift) =
            (part(&self.acts.head_ss, rows, 2, 0, c), part(&self.acts.head_ss, rows, 2, 1, c));
        let mut hm = vec![0.0; m * c];
        modulate_forward(&xh, &head_scale, &head_shift, &mut hm, n, c);
        let mut logits = vec![0.0f32; m * 2 * d];
        linear_forward(&hm, w("head.weight"), Some(w("head.bias")), &mut logits, m, c, 2 * d);
        Ok(logits)
    }
}
