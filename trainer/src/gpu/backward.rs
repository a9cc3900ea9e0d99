//! The backward on the device, `model::backward` op for op: parameter gradients added into the flat
//! device gradient buffer (same layout as the host's), so micro-batches accumulate.

use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaViewMut};
use infinity_kernels::attention::AttnDims;
use infinity_kernels::cuda::attention::attention_backward_dev;
use infinity_kernels::cuda::device::{Act, Buf, BufMut};
use infinity_kernels::cuda::head_ce::head_on_tensor_cores;
use infinity_kernels::cuda::layers::{
    embedding_backward_dev, gated_residual_backward_act, layernorm_backward_dev, modulate_param_grads,
    modulated_layernorm_backward_dev, rmsnorm_backward_dev, scale_gates_dev, AdaShape, DeviceRope,
};
use infinity_kernels::cuda::linear::{bias_grad, input_grad, input_grad_act, rounded, weight_grad};
use infinity_kernels::cuda::ops::{activation_backward_dev, gelu_act, gelu_backward_act};
use infinity_kernels::cuda::qkv::qkv_heads_backward_dev;
use infinity_kernels::cuda::util::{self, Factor};

use super::forward::{block_forward, saved, saved_act, BlockBufs, DeviceCondition, DeviceInput, GpuActs};
use super::Net;

/// The gradient view of parameter `name`.
fn g<'a>(net: &Net, grads: &'a mut CudaSlice<f32>, name: &str) -> CudaViewMut<'a, f32> {
    grads.slice_mut(net.lay.range(name))
}

/// Where a linear backward's input gradient goes: nowhere, an f32 buffer, or an activation (f32, or
/// bf16 alone written by the GEMM itself: an attention's dO, which only bf16 tiles read).
enum Dx<'a> {
    No,
    F32(&'a mut CudaSlice<f32>),
    Act(&'a mut Act),
}

impl<'a> From<Option<&'a mut CudaSlice<f32>>> for Dx<'a> {
    fn from(dx: Option<&'a mut CudaSlice<f32>>) -> Self {
        dx.map_or(Dx::No, Dx::F32)
    }
}

impl<'a> From<&'a mut Act> for Dx<'a> {
    fn from(dx: &'a mut Act) -> Self {
        Dx::Act(dx)
    }
}

/// Gradients of a linear layer `prefix`: `dx` written when wanted, `dW` (and `db` when `bias`) added.
#[allow(clippy::too_many_arguments)]
fn linear_bwd<'a>(
    net: &Net,
    grads: &mut CudaSlice<f32>,
    prefix: &str,
    bias: bool,
    dy: &dyn Buf,
    x: &dyn Buf,
    dx: impl Into<Dx<'a>>,
    (n, fin, fout): (usize, usize, usize),
) -> Result<()> {
    let (dev, gemm) = (net.dev, net.gemm);
    let dy = &rounded(gemm, dev, dy)?; // one bf16 copy for both products
    let weight = format!("{prefix}.weight");
    match dx.into() {
        Dx::No => {}
        Dx::F32(dx) => net.with_weight(&weight, |w| Ok(input_grad(gemm, dev, dy, w, dx, (n, fin, fout))?))?,
        Dx::Act(dx) => net.with_weight(&weight, |w| Ok(input_grad_act(gemm, dev, dy, w, dx, (n, fin, fout))?))?,
    }
    weight_grad(gemm, dev, dy, x, &mut g(net, grads, &weight), (n, fin, fout))?;
    if bias {
        bias_grad(dev, dy, &mut g(net, grads, &format!("{prefix}.bias")), n, fout)?;
    }
    Ok(())
}

/// Parameter gradients of the loss the forward computed, added into `grads`. `block_done(blk, grads)`
/// runs after each block's backward is enqueued (its gradients complete from then on, in stream order).
pub fn backward(
    net: &Net,
    inp: &DeviceInput,
    a: &GpuActs,
    rope: &DeviceRope,
    grads: &mut CudaSlice<f32>,
    block_done: &mut dyn FnMut(usize, &mut CudaSlice<f32>) -> Result<()>,
) -> Result<()> {
    let cfg = net.cfg;
    let (b, l, c, d) = (inp.b, inp.l, cfg.embed_dim, cfg.d);
    let n = b * l;
    let dev = net.dev;

    // ---- head: dh and dlogits come from the fused head + loss ----------------------------------------
    let dlogits = a.ce.dlogits.as_ref().expect("forward ran with grad");
    let dh = a.ce.dh.as_ref().expect("forward ran with grad");
    // (dW in the head's own arithmetic: bf16 where its forward ran on tensor cores, else the f32 that
    // upstream keeps the head in)
    let head_gemm = if head_on_tensor_cores(net.math(), c, d) { net.gemm } else { net.gemm32 };
    weight_grad(head_gemm, dev, dlogits, &a.h_head, &mut g(net, grads, "head.weight"), (n, c, 2 * d))?;
    bias_grad(dev, dlogits, &mut g(net, grads, "head.bias"), n, 2 * d)?;
    let (mut dhs, mut dhb) = (net.buf(b * c)?, net.buf(b * c)?);
    let hs = AdaShape { b, l, c, ps: 2 * c };
    let xhat = Factor::Normalized { x: &a.x_out, mean: &a.lnh[0], rstd: &a.lnh[1] };
    modulate_param_grads(dev, dh, xhat, (&mut dhs, &mut dhb), hs, c)?;
    let mut dhead_ss = net.buf(b * 2 * c)?;
    util::put_part(dev, &dhs, &mut dhead_ss, (b, 2, 0, c))?;
    util::put_part(dev, &dhb, &mut dhead_ss, (b, 2, 1, c))?;
    let mut dx = net.out(n * c)?;
    let stats = (&a.lnh[0] as &dyn Buf, &a.lnh[1] as &dyn Buf);
    modulated_layernorm_backward_dev(dev, dh, &a.x_out, &a.head_ss.slice(..), stats, None, &mut dx, hs)?;

    // ---- blocks, last to first ------------------------------------------------------------------------
    let mut dshared_gss = net.buf(b * 6 * c)?;
    let mut dkv_ca = match &a.text {
        Some(t) => Some(net.buf(t.kv_ca.len())?),
        None => None,
    };
    for blk in (0..cfg.depth).rev() {
        let saved_block = &a.blocks[blk];
        let recomputed = match saved_block.gss {
            // recomputation: only the block's input was kept; run its forward again
            None => {
                let x_in = saved(&saved_block.x_in);
                let mut x = net.buf(x_in.len())?;
                util::copy(dev, x_in, &mut x)?;
                Some(block_forward(net, blk, &inp.blocks(), rope, &a.shared_gss, a.text.as_ref(), x, None)?.0)
            }
            Some(_) => None,
        };
        let s = recomputed.as_ref().unwrap_or(saved_block);
        dx = block_backward(net, blk, inp, a, s, rope, dx, &mut dshared_gss, dkv_ca.as_mut(), grads)?;
        block_done(blk, grads)?;
    }

    // ---- input tokens and condition: f32 (the forward's island) ---------------------------------------
    let net = &net.f32_island();
    embedding_backward_dev(dev, &dx, &inp.scale_idx, &mut g(net, grads, "lvl_embed.weight"), c)?;
    let (mut dcond, mut dwe) = (net.buf(b * c)?, net.buf(b * (l - 1) * c)?);
    util::split_tokens(dev, &dx, &mut dcond, &mut dwe, (b, l, c))?;
    util::col_sum(dev, &dx, &mut g(net, grads, "pos_start"), b, l * c)?;
    linear_bwd(net, grads, "word_embed", true, &dwe, &inp.x_wo_prefix, Dx::No, (b * (l - 1), d, c))?;
    drop((dx, dwe));

    // ---- condition: AdaLN MLPs, then its source -----------------------------------------------------
    let (mut dsilu, mut tmp) = (net.buf(b * c)?, net.buf(b * c)?);
    linear_bwd(net, grads, "shared_ada_lin.1", true, &dshared_gss, &a.cond_silu, Some(&mut dsilu), (b, c, 6 * c))?;
    linear_bwd(net, grads, "head_nm.ada_lin.1", true, &dhead_ss, &a.cond_silu, Some(&mut tmp), (b, c, 2 * c))?;
    util::add(dev, &mut dsilu, &tmp)?;
    activation_backward_dev(dev, "silu_backward_f32", &dsilu, &a.cond, &mut tmp)?;
    util::add(dev, &mut dcond, &tmp)?;
    drop((dsilu, tmp, dshared_gss, dhead_ss));

    match &inp.cond {
        DeviceCondition::Class { labels } => {
            embedding_backward_dev(dev, &dcond, labels, &mut g(net, grads, "class_emb.weight"), c)?;
        }
        DeviceCondition::Text { cu, dropped, pool, .. } => {
            let t = a.text.as_ref().expect("text activations");
            let (ct, nt, hp) = (cfg.text_channels, cu[b], cfg.pool_heads());
            // attention pool
            let mut dpool = net.buf(b * c)?;
            linear_bwd(
                net,
                grads,
                "text_proj_for_sos.ca.proj",
                true,
                &dcond,
                &t.pool_attn,
                Some(&mut dpool),
                (b, c, c),
            )?;
            let (mut dq, mut dk, mut dv, mut delta) =
                (net.buf(b * c)?, net.buf(nt * c)?, net.buf(nt * c)?, net.buf(b * hp)?);
            let pdims = AttnDims { heads: hp, head_dim: c / hp, scale: 1.0 / ((c / hp) as f64).sqrt() };
            attention_backward_dev(
                dev,
                &dpool,
                (&t.pool_q, &t.pool_k, &t.pool_v),
                &t.pool_attn,
                &t.pool_lse,
                pool,
                pdims,
                (&mut dq, &mut dk, &mut dv),
                &mut delta,
                net.math(),
            )?;
            drop((dpool, delta));
            util::col_sum(dev, &dq, &mut g(net, grads, "text_proj_for_sos.ca.mat_q"), b, c)?;
            util::col_sum(dev, &dv, &mut g(net, grads, "text_proj_for_sos.ca.v_bias"), nt, c)?;
            let mut dpkv = net.buf(nt * 2 * c)?;
            util::put_part(dev, &dk, &mut dpkv, (nt, 2, 0, c))?;
            util::put_part(dev, &dv, &mut dpkv, (nt, 2, 1, c))?;
            drop((dq, dk, dv));
            let mut dkv = net.buf(nt * ct)?;
            linear_bwd(
                net,
                grads,
                "text_proj_for_sos.ca.mat_kv",
                false,
                &dpkv,
                &t.kv,
                Some(&mut dkv),
                (nt, ct, 2 * c),
            )?;
            drop(dpkv);
            // cross-attention context
            let dkv_ca = dkv_ca.expect("text path has a context gradient");
            let mut dt1g = net.buf(nt * c)?;
            linear_bwd(net, grads, "text_proj_for_ca.2", true, &dkv_ca, &t.t1g, Some(&mut dt1g), (nt, c, c))?;
            drop(dkv_ca);
            let mut dt1 = net.buf(nt * c)?;
            activation_backward_dev(dev, "gelu_backward_f32", &dt1g, &t.t1, &mut dt1)?;
            drop(dt1g);
            let mut dkv2 = net.buf(nt * ct)?;
            linear_bwd(net, grads, "text_proj_for_ca.0", true, &dt1, &t.kv, Some(&mut dkv2), (nt, ct, c))?;
            util::add(dev, &mut dkv, &dkv2)?;
            drop((dt1, dkv2));
            // text_norm, then the dropped samples' rows reach cfg_uncond
            let mut dkv_in = net.buf(nt * ct)?;
            let tw = net.w("text_norm.weight");
            rmsnorm_backward_dev(
                dev,
                &dkv,
                &t.kv_in,
                &tw,
                &t.kv_rstd,
                &mut dkv_in,
                &mut g(net, grads, "text_norm.weight"),
                (nt, ct),
            )?;
            drop(dkv);
            for (bi, &drop) in dropped.iter().enumerate() {
                if drop {
                    let (s, e) = (cu[bi], cu[bi + 1]);
                    util::add_rows_at(dev, &dkv_in, &mut g(net, grads, "cfg_uncond"), (s, e - s, ct))?;
                }
            }
        }
    }
    Ok(())
}

/// Backward of one block: returns the gradient of its input residual.
#[allow(clippy::too_many_arguments)]
fn block_backward(
    net: &Net,
    blk: usize,
    inp: &DeviceInput,
    a: &GpuActs,
    s: &BlockBufs,
    rope: &DeviceRope,
    dx_out: CudaSlice<f32>,
    dshared_gss: &mut CudaSlice<f32>,
    dkv_ca: Option<&mut CudaSlice<f32>>,
    grads: &mut CudaSlice<f32>,
) -> Result<CudaSlice<f32>> {
    let cfg = net.cfg;
    let (b, l, c, h) = (inp.b, inp.l, cfg.embed_dim, cfg.num_heads);
    let (n, hd, hf) = (b * l, c / h, cfg.ffn_hidden());
    let dev = net.dev;
    let name = |x: &str| format!("blocks.{blk}.{x}");
    let gss = saved(&s.gss);
    let part = |j: usize| gss.slice(j * c..);
    let sh = AdaShape { b, l, c, ps: 6 * c };
    // per-part gradients of gss (γ1, γ2, s1, s2, b1, b2), joined into [B, 6C] at the end
    let mut dparts: Vec<CudaSlice<f32>> = (0..6).map(|_| net.buf(b * c)).collect::<Result<_>>()?;

    // Each gradient buffer is dropped (freed in stream order) once its last reader is queued, so the
    // block holds one stage's buffers at a time, at most dx_out with dg and df1 or with df2, dg and
    // gelu(f1) (model::memory counts every stage).

    // feed-forward: x_out = x_ca + fc2(gelu(fc1(mod(LN(x_ca))))) · γ2
    // the branches' output gradients (df2, dsa_out) in bf16 alone with bf16 GEMMs: only their
    // projection's products and bias sum read them
    let mut df2 = net.act(n * c)?;
    gated_residual_backward_act(dev, &dx_out, saved(&s.f2), &part(1), &mut df2, &mut dparts[1], sh, c)?;
    let mut dg = net.out(n * hf)?;
    let gelu = gelu_act(dev, saved_act(&s.f1))?; // fc2's input again, bit for bit the forward's
    linear_bwd(net, grads, &name("ffn.fc2"), true, &df2, &gelu, Some(&mut dg), (n, hf, c))?;
    drop((df2, gelu));
    // dfc1 in bf16 alone with bf16 GEMMs: its two products and the bias's column sum read nothing else
    let mut df1 = net.act(n * hf)?;
    gelu_backward_act(dev, &dg, saved_act(&s.f1), &mut df1)?;
    drop(dg);
    let mut dh2 = net.out(n * c)?;
    linear_bwd(net, grads, &name("ffn.fc1"), true, &df1, saved_act(&s.h2), Some(&mut dh2), (n, c, hf))?;
    drop(df1);
    // the modulation's scale and shift from x̂ recomputed; back through the modulation and the
    // LayerNorm, plus the residual's gradient, in one pass
    let ([m2, r2], mut dx_ca) = (&s.ln2, net.out(n * c)?);
    let stats = (saved(m2) as &dyn Buf, saved(r2) as &dyn Buf);
    {
        let (lo, hi) = dparts.split_at_mut(5);
        let xhat2 = Factor::Normalized { x: saved(&s.x_ca), mean: stats.0, rstd: stats.1 };
        modulate_param_grads(dev, &dh2, xhat2, (&mut lo[3], &mut hi[0]), sh, c)?;
    }
    modulated_layernorm_backward_dev(dev, &dh2, saved(&s.x_ca), &part(3), stats, Some(&dx_out), &mut dx_ca, sh)?;
    drop((dx_out, dh2));

    // cross-attention: x_ca = x_sa + proj(attn(mat_q(ca_norm(x_sa)), kv_ca)); without text x_ca = x_sa
    let dx_sa = if let (Some(t), Some(dkv_ca), DeviceCondition::Text { cu, ca, .. }) = (&a.text, dkv_ca, &inp.cond) {
        let nt = cu[b];
        // the attention's dO, in bf16 alone when its backward runs on tensor cores (as its O is)
        let mut dattn = net.act_in(saved_act(&s.ca_attn).bf16_only(), n * c)?;
        linear_bwd(net, grads, &name("ca.proj"), true, &dx_ca, saved_act(&s.ca_attn), &mut dattn, (n, c, c))?;
        let (mut dq, mut dk, mut dv, mut delta) =
            (net.out(n * c)?, net.out(nt * c)?, net.out(nt * c)?, net.out(n * h)?);
        let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 / (hd as f64).sqrt() };
        let (ca_q, ca_k, ca_v) = (saved_act(&s.ca_q), saved(&s.ca_k), saved(&s.ca_v));
        attention_backward_dev(
            dev,
            &dattn,
            (ca_q, ca_k, ca_v),
            saved_act(&s.ca_attn),
            saved(&s.ca_lse),
            ca,
            dims,
            (&mut dq, &mut dk, &mut dv),
            &mut delta,
            net.math(),
        )?;
        drop((dattn, delta));
        util::col_sum(dev, &dv, &mut g(net, grads, &name("ca.v_bias")), nt, c)?;
        let mut dckv = net.out(nt * 2 * c)?;
        util::put_part(dev, &dk, &mut dckv, (nt, 2, 0, c))?;
        util::put_part(dev, &dv, &mut dckv, (nt, 2, 1, c))?;
        drop((dk, dv));
        let mut dctx = net.out(nt * c)?;
        linear_bwd(net, grads, &name("ca.mat_kv"), false, &dckv, &t.kv_ca, Some(&mut dctx), (nt, c, 2 * c))?;
        util::add(dev, dkv_ca, &dctx)?;
        drop((dckv, dctx));
        let mut dca_in = net.out(n * c)?;
        linear_bwd(net, grads, &name("ca.mat_q"), true, &dq, saved_act(&s.ca_in), Some(&mut dca_in), (n, c, c))?;
        drop(dq);
        let nw = net.w(&name("ca_norm.weight"));
        let (ra, rb) = (net.lay.range(&name("ca_norm.weight")), net.lay.range(&name("ca_norm.bias")));
        assert!(ra.end <= rb.start, "ca_norm.weight precedes ca_norm.bias in the layout");
        let (mut lo, mut hi) = grads.split_at_mut(rb.start);
        let (mut dnw, mut dnb) = (lo.slice_mut(ra), hi.slice_mut(..rb.len()));
        let [cm, cr] = &s.ca_ln;
        let params: Option<(&mut dyn BufMut, &mut dyn BufMut)> = Some((&mut dnw, &mut dnb));
        let mut tmp = net.out(n * c)?;
        layernorm_backward_dev(
            dev,
            &dca_in,
            saved(&s.x_sa),
            Some(&nw),
            saved(cm),
            saved(cr),
            &mut tmp,
            params,
            (n, c),
        )?;
        drop(dca_in);
        let mut dx_sa = net.out(n * c)?;
        util::sum(dev, &dx_ca, &tmp, &mut dx_sa)?;
        drop((dx_ca, tmp));
        dx_sa
    } else {
        dx_ca
    };

    // self-attention: x_sa = x_in + proj(attn(rope(norm(q)), rope(norm(k)), v)) · γ1
    let mut dsa_out = net.act(n * c)?;
    gated_residual_backward_act(dev, &dx_sa, saved(&s.sa_out), &part(0), &mut dsa_out, &mut dparts[0], sh, c)?;
    let mut dattn = net.act_in(saved_act(&s.attn).bf16_only(), n * c)?;
    linear_bwd(net, grads, &name("sa.proj"), true, &dsa_out, saved_act(&s.attn), &mut dattn, (n, c, c))?;
    drop(dsa_out);
    let (mut dq, mut dk, mut dv, mut delta) = (net.out(n * c)?, net.out(n * c)?, net.out(n * c)?, net.out(n * h)?);
    let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 };
    attention_backward_dev(
        dev,
        &dattn,
        (saved_act(&s.q), saved_act(&s.k), saved_act(&s.v)),
        saved_act(&s.attn),
        saved(&s.lse),
        &inp.sa,
        dims,
        (&mut dq, &mut dk, &mut dv),
        &mut delta,
        net.math(),
    )?;
    drop((dattn, delta));
    // back through RoPE, the normalisations and the split in one pass: dqkv (bf16 alone for bf16
    // GEMMs), dq_raw for the q bias, udy for the gain
    let gain = saved(&s.gain);
    let (mut dqkv, mut dq_raw, mut udy) = (net.act(n * 3 * c)?, net.out(n * c)?, net.out(n * h)?);
    let fwd = (saved(&s.q_raw), saved(&s.k_raw), saved(&s.q_norm), saved(&s.k_norm));
    qkv_heads_backward_dev(dev, (&dq, &dk, &dv), fwd, gain, rope, (l, h), &mut dqkv, &mut dq_raw, &mut udy)?;
    drop((dq, dk));
    let mut dgain = net.buf(h)?; // added into
    bias_grad(dev, &udy, &mut dgain, n, h)?;
    let sm = net.w(&name("sa.scale_mul_1H11"));
    util::attn_gain_backward(dev, &sm, gain, &dgain, &mut g(net, grads, &name("sa.scale_mul_1H11")))?;
    util::col_sum(dev, &dq_raw, &mut g(net, grads, &name("sa.q_bias")), n, c)?;
    util::col_sum(dev, &dv, &mut g(net, grads, &name("sa.v_bias")), n, c)?;
    drop((dq_raw, udy, dv));
    let mut dh1 = net.out(n * c)?;
    linear_bwd(net, grads, &name("sa.mat_qkv"), false, &dqkv, saved_act(&s.h1), Some(&mut dh1), (n, c, 3 * c))?;
    drop(dqkv);
    let ([m1, r1], mut dx_in) = (&s.ln1, net.out(n * c)?);
    let stats = (saved(m1) as &dyn Buf, saved(r1) as &dyn Buf);
    {
        let (lo, hi) = dparts.split_at_mut(4);
        let xhat1 = Factor::Normalized { x: saved(&s.x_in), mean: stats.0, rstd: stats.1 };
        modulate_param_grads(dev, &dh1, xhat1, (&mut lo[2], &mut hi[0]), sh, c)?;
    }
    modulated_layernorm_backward_dev(dev, &dh1, saved(&s.x_in), &part(2), stats, Some(&dx_sa), &mut dx_in, sh)?;
    drop((dh1, dx_sa));

    // gss = (ada_gss + shared_gss), its gates scaled by the drop path's factors
    let mut dgss = net.out(b * 6 * c)?;
    for (j, p) in dparts.iter().enumerate() {
        util::put_part(dev, p, &mut dgss, (b, 6, j, c))?;
    }
    if let Some(f) = inp.blocks().block_drop_path(blk) {
        scale_gates_dev(dev, &mut dgss, &f, 2, c, 6 * c)?;
    }
    util::col_sum(dev, &dgss, &mut g(net, grads, &name("ada_gss")), b, 6 * c)?;
    util::add(dev, dshared_gss, &dgss)?;
    Ok(dx_in)
}
