//! The hand-written backward of [`super::forward::forward`]: gradients of `loss` for every parameter,
//! added into `grads` (so micro-batches accumulate). Reads top to bottom as the forward in reverse.
//!
//! Dims legend as in `forward.rs`: `B` batch, `L` tokens, `N = B·L`, `C` width, `H` heads, `c = C/H`,
//! `Hf` FFN width, `d` bits, `T` text tokens of the batch, `Ct` text width; a `d` prefix is a gradient
//! of the same shape (`dx [N, C]`).

use infinity_kernels::act::{gelu_backward, silu_backward};
use infinity_kernels::adaln::{gated_residual_backward, modulate_backward, scale_gates};
use infinity_kernels::attention::{attention_backward, normalize_heads_backward, AttnDims};
use infinity_kernels::embedding::embedding_backward;
use infinity_kernels::linear::linear_backward;
use infinity_kernels::norm::{layernorm_backward, rmsnorm_backward};
use infinity_kernels::rope::rope_apply;
use infinity_kernels::Real;

use super::config::ModelConfig;
use super::forward::{attn_gain, part, scale_index, Acts, Condition, ModelInput};
use super::params::{Layout, Params};

/// `dst[b, j·C..(j+1)·C] += src[b]` for `dst: [B, k·C]`.
fn add_part<T: Real>(dst: &mut [T], src: &[T], k: usize, j: usize, c: usize) {
    for (bi, row) in src.chunks_exact(c).enumerate() {
        for (o, v) in dst[bi * k * c + j * c..bi * k * c + (j + 1) * c].iter_mut().zip(row) {
            *o += *v;
        }
    }
}

/// `Σ` of the rows of `[*, C]`, added into `out: [C]`.
fn add_row_sum<T: Real>(out: &mut [T], rows: &[T]) {
    for row in rows.chunks_exact(out.len()) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += *v;
        }
    }
}

fn add_into<T: Real>(dst: &mut [T], src: &[T]) {
    for (o, v) in dst.iter_mut().zip(src) {
        *o += *v;
    }
}

/// Interleave `[N, C]` parts into `[N, k·C]` rows.
fn join<T: Real>(parts: &[&[T]], c: usize) -> Vec<T> {
    let n = parts[0].len() / c;
    let mut out = Vec::with_capacity(n * c * parts.len());
    for i in 0..n {
        for p in parts {
            out.extend_from_slice(&p[i * c..(i + 1) * c]);
        }
    }
    out
}

/// Parameter gradients of `acts.ce.loss` (which forward computed), added into `grads`.
pub fn backward<T: Real>(
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<T>,
    inp: &ModelInput<T>,
    a: &Acts<T>,
    grads: &mut Params<T>,
) {
    let (b, l, c, d) = (a.b, a.l, cfg.embed_dim, cfg.d);
    let n = b * l;
    let w = |name: &str| p.get(lay, name);

    // ---- head ------------------------------------------------------------------------------------
    let mut dh = vec![T::zero(); n * c];
    {
        let (gw, gb) = two(grads, lay, "head.weight", "head.bias");
        linear_backward(&a.dlogits, &a.h_head, w("head.weight"), Some(&mut dh), gw, Some(gb), n, c, 2 * d);
    }
    let hs = part(&a.head_ss, b, 2, 0, c);
    let (mut dxhat, mut dhs, mut dhb) = (vec![T::zero(); n * c], vec![T::zero(); b * c], vec![T::zero(); b * c]);
    modulate_backward(&dh, &a.xhat_h, &hs, &mut dxhat, &mut dhs, &mut dhb, l, c);
    let mut dhead_ss = vec![T::zero(); b * 2 * c];
    add_part(&mut dhead_ss, &dhs, 2, 0, c);
    add_part(&mut dhead_ss, &dhb, 2, 1, c);
    let mut dx = vec![T::zero(); n * c];
    layernorm_backward(&dxhat, &a.x_out, None, &a.lnh_mean, &a.lnh_rstd, &mut dx, None, None, c);

    // ---- blocks, last to first ------------------------------------------------------------------
    let mut dshared_gss = vec![T::zero(); b * 6 * c];
    let mut dkv_ca = a.text.as_ref().map(|t| vec![T::zero(); t.kv_ca.len()]);
    for blk in (0..cfg.depth).rev() {
        dx = block_backward(cfg, lay, p, blk, a, dx, &mut dshared_gss, dkv_ca.as_deref_mut(), inp, grads);
    }

    // ---- input tokens ----------------------------------------------------------------------------
    let mut dcond = vec![T::zero(); b * c];
    embedding_backward(&dx, &scale_index(b, inp.scales), grads.get_mut(lay, "lvl_embed.weight"), c);
    let mut dwe = Vec::with_capacity(b * (l - 1) * c);
    for bi in 0..b {
        let sos = &dx[bi * l * c..(bi * l + 1) * c];
        add_into(&mut dcond[bi * c..(bi + 1) * c], sos);
        add_into(grads.get_mut(lay, "pos_start"), sos);
        dwe.extend_from_slice(&dx[(bi * l + 1) * c..(bi + 1) * l * c]);
    }
    {
        let (gw, gb) = two(grads, lay, "word_embed.weight", "word_embed.bias");
        linear_backward(&dwe, inp.x_wo_prefix, w("word_embed.weight"), None, gw, Some(gb), b * (l - 1), d, c);
    }

    // ---- condition: AdaLN MLPs, then its source --------------------------------------------------
    let mut dsilu = vec![T::zero(); b * c];
    let mut tmp = vec![T::zero(); b * c];
    {
        let (gw, gb) = two(grads, lay, "shared_ada_lin.1.weight", "shared_ada_lin.1.bias");
        linear_backward(
            &dshared_gss,
            &a.cond_silu,
            w("shared_ada_lin.1.weight"),
            Some(&mut tmp),
            gw,
            Some(gb),
            b,
            c,
            6 * c,
        );
    }
    add_into(&mut dsilu, &tmp);
    {
        let (gw, gb) = two(grads, lay, "head_nm.ada_lin.1.weight", "head_nm.ada_lin.1.bias");
        linear_backward(
            &dhead_ss,
            &a.cond_silu,
            w("head_nm.ada_lin.1.weight"),
            Some(&mut tmp),
            gw,
            Some(gb),
            b,
            c,
            2 * c,
        );
    }
    add_into(&mut dsilu, &tmp);
    silu_backward(&dsilu, &a.cond, &mut tmp);
    add_into(&mut dcond, &tmp);

    match inp.cond {
        Condition::Class { labels } => embedding_backward(&dcond, labels, grads.get_mut(lay, "class_emb.weight"), c),
        Condition::Text { dropped, .. } => {
            let t = a.text.as_ref().expect("text activations");
            let (ct, nt, hp) = (cfg.text_channels, t.cu[b], cfg.pool_heads());
            // attention pool
            let mut dpool = vec![T::zero(); b * c];
            {
                let (gw, gb) = two(grads, lay, "text_proj_for_sos.ca.proj.weight", "text_proj_for_sos.ca.proj.bias");
                linear_backward(
                    &dcond,
                    &t.pool_attn,
                    w("text_proj_for_sos.ca.proj.weight"),
                    Some(&mut dpool),
                    gw,
                    Some(gb),
                    b,
                    c,
                    c,
                );
            }
            let (mut dq, mut dk, mut dv) = (vec![T::zero(); b * c], vec![T::zero(); nt * c], vec![T::zero(); nt * c]);
            let pdims = AttnDims { heads: hp, head_dim: c / hp, scale: 1.0 / ((c / hp) as f64).sqrt() };
            attention_backward(
                &dpool,
                &t.pool_q,
                &t.pool_k,
                &t.pool_v,
                &t.pool_attn,
                &t.pool_lse,
                &mut dq,
                &mut dk,
                &mut dv,
                &a.pool_segs,
                pdims,
            );
            add_row_sum(grads.get_mut(lay, "text_proj_for_sos.ca.mat_q"), &dq);
            add_row_sum(grads.get_mut(lay, "text_proj_for_sos.ca.v_bias"), &dv);
            let mut dkv = vec![T::zero(); nt * ct];
            linear_backward(
                &join(&[&dk, &dv], c),
                &t.kv,
                w("text_proj_for_sos.ca.mat_kv.weight"),
                Some(&mut dkv),
                grads.get_mut(lay, "text_proj_for_sos.ca.mat_kv.weight"),
                None,
                nt,
                ct,
                2 * c,
            );
            // cross-attention context
            let dkv_ca = dkv_ca.expect("text path has a context gradient");
            let mut dt1g = vec![T::zero(); nt * c];
            {
                let (gw, gb) = two(grads, lay, "text_proj_for_ca.2.weight", "text_proj_for_ca.2.bias");
                linear_backward(
                    &dkv_ca,
                    &t.t1g,
                    w("text_proj_for_ca.2.weight"),
                    Some(&mut dt1g),
                    gw,
                    Some(gb),
                    nt,
                    c,
                    c,
                );
            }
            let mut dt1 = vec![T::zero(); nt * c];
            gelu_backward(&dt1g, &t.t1, &mut dt1);
            let mut dkv2 = vec![T::zero(); nt * ct];
            {
                let (gw, gb) = two(grads, lay, "text_proj_for_ca.0.weight", "text_proj_for_ca.0.bias");
                linear_backward(&dt1, &t.kv, w("text_proj_for_ca.0.weight"), Some(&mut dkv2), gw, Some(gb), nt, ct, c);
            }
            add_into(&mut dkv, &dkv2);
            // text_norm, then the dropped samples' rows reach cfg_uncond
            let mut dkv_in = vec![T::zero(); nt * ct];
            rmsnorm_backward(
                &dkv,
                &t.kv_in,
                w("text_norm.weight"),
                &t.kv_rstd,
                &mut dkv_in,
                grads.get_mut(lay, "text_norm.weight"),
                ct,
            );
            let duncond = grads.get_mut(lay, "cfg_uncond");
            for (bi, &drop) in dropped.iter().enumerate() {
                if drop {
                    let (s, e) = (t.cu[bi], t.cu[bi + 1]);
                    add_into(&mut duncond[..(e - s) * ct], &dkv_in[s * ct..e * ct]);
                }
            }
        }
    }
}

/// Two disjoint gradient slices (weight and bias of one layer).
fn two<'a, T: Real>(g: &'a mut Params<T>, lay: &Layout, a: &str, b: &str) -> (&'a mut [T], &'a mut [T]) {
    let (ra, rb) = (lay.range(a), lay.range(b));
    assert!(ra.end <= rb.start, "`{a}` must precede `{b}` in the layout");
    let (lo, hi) = g.data.split_at_mut(rb.start);
    (&mut lo[ra], &mut hi[..rb.len()])
}

/// Backward of one block: returns the gradient of its input residual.
#[allow(clippy::too_many_arguments)]
fn block_backward<T: Real>(
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<T>,
    blk: usize,
    a: &Acts<T>,
    dx_out: Vec<T>,
    dshared_gss: &mut [T],
    dkv_ca: Option<&mut [T]>,
    inp: &ModelInput<T>,
    grads: &mut Params<T>,
) -> Vec<T> {
    let (b, l, c, h) = (a.b, a.l, cfg.embed_dim, cfg.num_heads);
    let (n, hd, hf) = (b * l, c / h, cfg.ffn_hidden());
    let s = &a.blocks[blk];
    let name = |x: &str| format!("blocks.{blk}.{x}");
    let w = |x: &str| p.get(lay, &name(x));
    let g = |j: usize| part(&s.gss, b, 6, j, c);
    let (gamma1, gamma2, scale1, scale2) = (g(0), g(1), g(2), g(3));
    let mut dgss = vec![T::zero(); b * 6 * c];
    let mut dpart = |j: usize, v: &[T]| add_part(&mut dgss, v, 6, j, c);

    // feed-forward: x_out = x_ca + fc2(gelu(fc1(mod(LN(x_ca))))) · γ2
    let mut dx_ca = dx_out.clone();
    let (mut df2, mut dgamma2) = (vec![T::zero(); n * c], vec![T::zero(); b * c]);
    gated_residual_backward(&dx_out, &s.f2, &gamma2, &mut df2, &mut dgamma2, l, c);
    let mut dg = vec![T::zero(); n * hf];
    {
        let (gw, gb) = two(grads, lay, &name("ffn.fc2.weight"), &name("ffn.fc2.bias"));
        linear_backward(&df2, &s.g, w("ffn.fc2.weight"), Some(&mut dg), gw, Some(gb), n, hf, c);
    }
    let mut df1 = vec![T::zero(); n * hf];
    gelu_backward(&dg, &s.f1, &mut df1);
    let mut dh2 = vec![T::zero(); n * c];
    {
        let (gw, gb) = two(grads, lay, &name("ffn.fc1.weight"), &name("ffn.fc1.bias"));
        linear_backward(&df1, &s.h2, w("ffn.fc1.weight"), Some(&mut dh2), gw, Some(gb), n, c, hf);
    }
    let (mut dxhat2, mut ds2, mut db2) = (vec![T::zero(); n * c], vec![T::zero(); b * c], vec![T::zero(); b * c]);
    modulate_backward(&dh2, &s.xhat2, &scale2, &mut dxhat2, &mut ds2, &mut db2, l, c);
    let mut tmp = vec![T::zero(); n * c];
    layernorm_backward(&dxhat2, &s.x_ca, None, &s.ln2_mean, &s.ln2_rstd, &mut tmp, None, None, c);
    add_into(&mut dx_ca, &tmp);
    dpart(1, &dgamma2);
    dpart(3, &ds2);
    dpart(5, &db2);

    // cross-attention: x_ca = x_sa + proj(attn(mat_q(ca_norm(x_sa)), kv_ca))
    let mut dx_sa = dx_ca.clone();
    if let (Some(t), Some(dkv_ca)) = (&a.text, dkv_ca) {
        let nt = t.cu[b];
        let mut dattn = vec![T::zero(); n * c];
        {
            let (gw, gb) = two(grads, lay, &name("ca.proj.weight"), &name("ca.proj.bias"));
            linear_backward(&dx_ca, &s.ca_attn, w("ca.proj.weight"), Some(&mut dattn), gw, Some(gb), n, c, c);
        }
        let (mut dq, mut dk, mut dv) = (vec![T::zero(); n * c], vec![T::zero(); nt * c], vec![T::zero(); nt * c]);
        let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 / (hd as f64).sqrt() };
        attention_backward(
            &dattn, &s.ca_q, &s.ca_k, &s.ca_v, &s.ca_attn, &s.ca_lse, &mut dq, &mut dk, &mut dv, &a.ca_segs, dims,
        );
        add_row_sum(grads.get_mut(lay, &name("ca.v_bias")), &dv);
        let mut dctx = vec![T::zero(); nt * c];
        linear_backward(
            &join(&[&dk, &dv], c),
            &t.kv_ca,
            w("ca.mat_kv.weight"),
            Some(&mut dctx),
            grads.get_mut(lay, &name("ca.mat_kv.weight")),
            None,
            nt,
            c,
            2 * c,
        );
        add_into(dkv_ca, &dctx);
        let mut dca_in = vec![T::zero(); n * c];
        {
            let (gw, gb) = two(grads, lay, &name("ca.mat_q.weight"), &name("ca.mat_q.bias"));
            linear_backward(&dq, &s.ca_in, w("ca.mat_q.weight"), Some(&mut dca_in), gw, Some(gb), n, c, c);
        }
        let (gw, gb) = two(grads, lay, &name("ca_norm.weight"), &name("ca_norm.bias"));
        layernorm_backward(
            &dca_in,
            &s.x_sa,
            Some(w("ca_norm.weight")),
            &s.ca_mean,
            &s.ca_rstd,
            &mut tmp,
            Some(gw),
            Some(gb),
            c,
        );
        add_into(&mut dx_sa, &tmp);
    }

    // self-attention: x_sa = x_in + proj(attn(rope(norm(q)), rope(norm(k)), v)) · γ1
    let mut dx_in = dx_sa.clone();
    let (mut dsa_out, mut dgamma1) = (vec![T::zero(); n * c], vec![T::zero(); b * c]);
    gated_residual_backward(&dx_sa, &s.sa_out, &gamma1, &mut dsa_out, &mut dgamma1, l, c);
    let mut dattn = vec![T::zero(); n * c];
    {
        let (gw, gb) = two(grads, lay, &name("sa.proj.weight"), &name("sa.proj.bias"));
        linear_backward(&dsa_out, &s.attn, w("sa.proj.weight"), Some(&mut dattn), gw, Some(gb), n, c, c);
    }
    let (mut dq, mut dk, mut dv) = (vec![T::zero(); n * c], vec![T::zero(); n * c], vec![T::zero(); n * c]);
    attention_backward(
        &dattn,
        &s.q,
        &s.k,
        &s.v,
        &s.attn,
        &s.lse,
        &mut dq,
        &mut dk,
        &mut dv,
        &a.sa_segs,
        AttnDims { heads: h, head_dim: hd, scale: 1.0 },
    );
    rope_apply(&mut dq, inp.rope, l, h, 0, true);
    rope_apply(&mut dk, inp.rope, l, h, 0, true);
    let scale_mul = w("sa.scale_mul_1H11");
    let gain = attn_gain(scale_mul);
    let (mut dq_raw, mut dk_raw, mut dgain) = (vec![T::zero(); n * c], vec![T::zero(); n * c], vec![T::zero(); h]);
    normalize_heads_backward(&dq, &s.q_raw, &s.q_norm, &gain, &mut dq_raw, Some(&mut dgain), h, hd);
    normalize_heads_backward(&dk, &s.k_raw, &s.k_norm, &vec![T::one(); h], &mut dk_raw, None, h, hd);
    {
        // gain = exp(clamp_max(scale_mul, ln 100)); the clamp passes gradient where scale_mul ≤ ln 100
        let dsm = grads.get_mut(lay, &name("sa.scale_mul_1H11"));
        for i in 0..h {
            if scale_mul[i] <= T::of(100f64.ln()) {
                dsm[i] += dgain[i] * gain[i];
            }
        }
    }
    add_row_sum(grads.get_mut(lay, &name("sa.q_bias")), &dq_raw);
    add_row_sum(grads.get_mut(lay, &name("sa.v_bias")), &dv);
    let mut dh1 = vec![T::zero(); n * c];
    linear_backward(
        &join(&[&dq_raw, &dk_raw, &dv], c),
        &s.h1,
        w("sa.mat_qkv.weight"),
        Some(&mut dh1),
        grads.get_mut(lay, &name("sa.mat_qkv.weight")),
        None,
        n,
        c,
        3 * c,
    );
    let (mut dxhat1, mut ds1, mut db1) = (vec![T::zero(); n * c], vec![T::zero(); b * c], vec![T::zero(); b * c]);
    modulate_backward(&dh1, &s.xhat1, &scale1, &mut dxhat1, &mut ds1, &mut db1, l, c);
    layernorm_backward(&dxhat1, &s.x_in, None, &s.ln1_mean, &s.ln1_rstd, &mut tmp, None, None, c);
    add_into(&mut dx_in, &tmp);
    dpart(0, &dgamma1);
    dpart(2, &ds1);
    dpart(4, &db1);

    // gss = (ada_gss + shared_gss), its gates scaled by the drop path's factors
    if let Some(f) = inp.block_drop_path(blk) {
        scale_gates(&mut dgss, f, 2, c, 6 * c);
    }
    add_row_sum(grads.get_mut(lay, &name("ada_gss")), &dgss);
    add_into(dshared_gss, &dgss);
    dx_in
}
