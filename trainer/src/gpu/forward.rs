//! The training forward on the device: the same computation as `model::forward`, op for op, through
//! the CUDA twins (each checked against its CPU twin), saving what the backward needs in device
//! buffers. Dims legend as in `model::forward`: `B` batch, `L` tokens, `N = B·L`, `C` width, `H` heads,
//! `c = C/H`, `Hf` FFN width, `d` bits, `T` text tokens of the batch, `Ct` text width, `Hp` pool heads.

use anyhow::Result;
use cudarc::driver::CudaSlice;
use infinity_kernels::attention::AttnDims;
use infinity_kernels::cuda::attention::{attention_forward_dev, runs_on_tensor_cores, AttnRanges};
use infinity_kernels::cuda::device::Act;
use infinity_kernels::cuda::head_ce::{head_bitwise_ce_device, head_on_tensor_cores, HeadCeDevice};
use infinity_kernels::cuda::layers::{
    embedding_dev, gated_residual_dev, layernorm_act, modulated_layernorm_dev, rmsnorm_dev, scale_gates_dev, AdaShape,
    DeviceRope,
};
use infinity_kernels::cuda::ops::{activation_dev, bias_gelu_dev};
use infinity_kernels::cuda::qkv::qkv_heads_dev;
use infinity_kernels::cuda::util;

use super::Net;

/// A batch's inputs on the device.
pub struct DeviceInput {
    pub b: usize,
    pub l: usize,
    /// `[B, L−1, d]` teacher-forcing inputs, `[B, L, d]` labels, `[N]` token weights.
    pub x_wo_prefix: CudaSlice<f32>,
    pub gt_bits: CudaSlice<u8>,
    pub weights: CudaSlice<f32>,
    /// `[N]` each token's scale (the level embedding's index).
    pub scale_idx: CudaSlice<i32>,
    pub label_smoothing: f32,
    pub cond: DeviceCondition,
    /// Block-causal self-attention ranges.
    pub sa: AttnRanges,
    /// `[depth, B, 2]` drop-path factors of the blocks' gated branches (`ModelInput::drop_path`).
    pub drop_path: Option<CudaSlice<f32>>,
}

impl DeviceInput {
    /// What the blocks read of the batch.
    pub fn blocks(&self) -> BlockInput<'_> {
        BlockInput { b: self.b, l: self.l, sa: &self.sa, cond: &self.cond, drop_path: self.drop_path.as_ref() }
    }
}

/// What a block reads of its batch: `B` rows of `L` tokens, the self-attention's ranges, the condition
/// (text: the cross-attention's ranges) and the drop-path factors.
#[derive(Clone, Copy)]
pub struct BlockInput<'a> {
    pub b: usize,
    pub l: usize,
    pub sa: &'a AttnRanges,
    pub cond: &'a DeviceCondition,
    /// `[depth, B, 2]`.
    pub drop_path: Option<&'a CudaSlice<f32>>,
}

impl<'a> BlockInput<'a> {
    /// Block `blk`'s `[B, 2]` drop-path factors (`ModelInput::block_drop_path` on the device).
    pub fn block_drop_path(&self, blk: usize) -> Option<cudarc::driver::CudaView<'a, f32>> {
        self.drop_path.map(|f| f.slice(blk * 2 * self.b..(blk + 1) * 2 * self.b))
    }
}

/// Sampling's self-attention keys and values (`gpu::sample`): per block `[R, Lmax, C]` of the scales
/// so far; a block appends its scale's at `start` of each row and attends to the cache with the
/// input's `sa` ranges (query row `r·n + t` sees keys `r·Lmax .. r·Lmax + start + n`).
pub struct KvCache {
    pub k: Vec<Act>,
    pub v: Vec<Act>,
    pub lmax: usize,
    pub start: usize,
}

pub enum DeviceCondition {
    /// `[B]` class ids (`num_classes` = the null class).
    Class { labels: CudaSlice<i32> },
    /// `[T, Ct]` packed text features, `cu [B+1]` offsets, dropped samples; cross-attention and pool
    /// ranges.
    Text { kv_compact: CudaSlice<f32>, cu: Vec<usize>, dropped: Vec<bool>, ca: Box<AttnRanges>, pool: Box<AttnRanges> },
}

/// Saved device activations of one block (the fields of `model/acts.rs`'s `BlockActs`, of the same
/// shapes, and `gain`).
#[derive(Default)]
pub struct BlockBufs {
    pub x_in: Option<CudaSlice<f32>>,
    pub gss: Option<CudaSlice<f32>>,
    /// `[H]` the cosine attention's logit scale, `exp(min(scale_mul, ln 100))` (the CPU forward
    /// computes it where it is used).
    pub gain: Option<CudaSlice<f32>>,
    /// The pre-norm LayerNorms' statistics (their outputs x̂ are recomputed from the input, not kept).
    pub ln1: [Option<CudaSlice<f32>>; 2],
    /// The blocks' matmul inputs (bf16 alone with bf16 matmuls: `Net::act`).
    pub h1: Option<Act>,
    pub q_raw: Option<CudaSlice<f32>>,
    pub k_raw: Option<CudaSlice<f32>>,
    pub q_norm: Option<CudaSlice<f32>>,
    pub k_norm: Option<CudaSlice<f32>>,
    /// The attention's inputs (bf16 alone for the tensor-core kernels).
    pub q: Option<Act>,
    pub k: Option<Act>,
    pub v: Option<Act>,
    /// The attentions' outputs (bf16 alone from the tensor-core kernels: only bf16 products and the
    /// attention backward read them).
    pub attn: Option<Act>,
    pub lse: Option<CudaSlice<f32>>,
    pub sa_out: Option<CudaSlice<f32>>,
    /// The residual after self-attention, kept only with text (without cross-attention it is `x_ca`).
    pub x_sa: Option<CudaSlice<f32>>,
    pub ca_ln: [Option<CudaSlice<f32>>; 2],
    /// ca_norm's output and the cross-attention's q (bf16 alone with bf16 GEMMs and tensor cores).
    pub ca_in: Option<Act>,
    pub ca_q: Option<Act>,
    pub ca_k: Option<CudaSlice<f32>>,
    pub ca_v: Option<CudaSlice<f32>>,
    pub ca_attn: Option<Act>,
    pub ca_lse: Option<CudaSlice<f32>>,
    pub x_ca: Option<CudaSlice<f32>>,
    pub ln2: [Option<CudaSlice<f32>>; 2],
    pub h2: Option<Act>,
    /// The GELU's input (bf16 alone with bf16 matmuls, as under autocast); its output, fc2's input,
    /// is made again from it in the backward (`ops::gelu_act`) rather than kept.
    pub f1: Option<Act>,
    pub f2: Option<CudaSlice<f32>>,
}

/// Saved device activations of the text path (`model/acts.rs`'s `TextActs`).
pub struct TextBufs {
    /// `[T, Ct]` features after CFG dropout; `[T]` text_norm's reciprocal RMS; `[T, Ct]` its output.
    pub kv_in: CudaSlice<f32>,
    pub kv_rstd: CudaSlice<f32>,
    pub kv: CudaSlice<f32>,
    /// `[B, C]` pool queries, `[T, C]` keys and values, `[B, C]` output, `[B, Hp]` lse.
    pub pool_q: CudaSlice<f32>,
    pub pool_k: CudaSlice<f32>,
    pub pool_v: CudaSlice<f32>,
    pub pool_attn: Act,
    pub pool_lse: CudaSlice<f32>,
    /// `[T, C]` text_proj_for_ca: first linear, GELU, output (the cross-attention context).
    pub t1: CudaSlice<f32>,
    pub t1g: CudaSlice<f32>,
    pub kv_ca: CudaSlice<f32>,
}

/// Everything the backward needs, plus the loss outputs.
pub struct GpuActs {
    pub text: Option<TextBufs>,
    /// `[B, C]` condition and its SiLU; `[B, 6C]`, `[B, 2C]` AdaLN MLP outputs.
    pub cond: CudaSlice<f32>,
    pub cond_silu: CudaSlice<f32>,
    pub shared_gss: CudaSlice<f32>,
    pub head_ss: CudaSlice<f32>,
    pub blocks: Vec<BlockBufs>,
    /// `[N, C]` final residual, its LN's `[N]` statistics and the modulated LN (the head's input: bf16
    /// alone when the head runs on tensor cores, which with the dW GEMM is all that reads it; x̂ is
    /// recomputed for the scale's gradient).
    pub x_out: CudaSlice<f32>,
    pub lnh: [CudaSlice<f32>; 2],
    pub h_head: Act,
    /// Per-token loss, correct bits, dlogits and `dh` of the fused head + loss.
    pub ce: HeadCeDevice,
}

/// Take a saved buffer (the backward reads each once; a missing one is a bug, not an input error).
pub(super) fn saved(b: &Option<CudaSlice<f32>>) -> &CudaSlice<f32> {
    b.as_ref().expect("forward saved this activation")
}

/// The same for a matmul input ([`Act`]).
pub(super) fn saved_act(b: &Option<Act>) -> &Act {
    b.as_ref().expect("forward saved this activation")
}

/// Run the model and the fused head + loss (`grad`: also `dlogits` and `dh` for the backward). Without
/// `grad` no block activations are kept; with `recompute`, each block keeps only its input and the
/// backward runs the block forward again.
pub fn forward(net: &Net, inp: &DeviceInput, rope: &DeviceRope, grad: bool, recompute: bool) -> Result<GpuActs> {
    let cfg = net.cfg;
    let (b, l, c, d) = (inp.b, inp.l, cfg.embed_dim, cfg.d);
    let n = b * l;
    let dev = net.dev;

    let Conditioned { text, cond, cond_silu, shared_gss, head_ss } = conditioned(net, b, &inp.cond)?;

    // ---- input tokens (in f32, as upstream's autocast-disabled region) ------------------------------
    let island = net.f32_island();
    let mut we = net.buf(b * (l - 1) * c)?;
    island.linear(&inp.x_wo_prefix, "word_embed", true, &mut we, (b * (l - 1), d, c))?;
    let mut x = net.buf(n * c)?;
    util::assemble_tokens(dev, &cond, &net.w("pos_start"), &we, &mut x, (b, l, c))?;
    embedding_dev(dev, &net.w("lvl_embed.weight"), &inp.scale_idx, &mut x, c, true)?;
    drop(we);

    // ---- blocks ------------------------------------------------------------------------------------
    let mut blocks = Vec::with_capacity(cfg.depth);
    for blk in 0..cfg.depth {
        let (s, x_next) = block_forward(net, blk, &inp.blocks(), rope, &shared_gss, text.as_ref(), x, None)?;
        blocks.push(match (grad, recompute) {
            (false, _) => BlockBufs::default(),
            (true, true) => BlockBufs { x_in: s.x_in, ..Default::default() },
            (true, false) => s,
        });
        x = x_next;
    }

    // ---- head and loss ----------------------------------------------------------------------------
    let (mut mean, mut rstd) = (net.out(n)?, net.out(n)?);
    let mut h_head = net.act_in(head_on_tensor_cores(net.math(), c, d), n * c)?;
    let (hs, eps) = (AdaShape { b, l, c, ps: 2 * c }, cfg.norm_eps as f32);
    let (scale, shift) = (head_ss.slice(..), head_ss.slice(c..));
    modulated_layernorm_dev(dev, &x, &scale, &shift, &mut h_head, (&mut mean, &mut rstd), hs, eps)?;
    let mut ce = HeadCeDevice::new(dev, (n, c, d), grad)?;
    let (hw, hb) = (net.w("head.weight"), net.w("head.bias"));
    head_bitwise_ce_device(
        dev,
        &h_head,
        &hw,
        &hb,
        &inp.gt_bits,
        &inp.weights,
        inp.label_smoothing,
        (n, c, d),
        &mut ce,
        net.math(),
    )?;
    Ok(GpuActs { text, cond, cond_silu, shared_gss, head_ss, blocks, x_out: x, lnh: [mean, rstd], h_head, ce })
}

/// The condition and the AdaLN MLPs' outputs of `B` rows.
pub struct Conditioned {
    pub text: Option<TextBufs>,
    /// `[B, C]` condition and its SiLU; `[B, 6C]`, `[B, 2C]` AdaLN MLP outputs.
    pub cond: CudaSlice<f32>,
    pub cond_silu: CudaSlice<f32>,
    pub shared_gss: CudaSlice<f32>,
    pub head_ss: CudaSlice<f32>,
}

/// The condition and the AdaLN MLPs (in f32, as upstream's autocast-disabled region).
pub fn conditioned(net: &Net, b: usize, dc: &DeviceCondition) -> Result<Conditioned> {
    let (dev, c) = (net.dev, net.cfg.embed_dim);
    let island = net.f32_island();
    let (text, cond) = condition_forward(&island, b, dc)?;
    let mut cond_silu = net.buf(b * c)?;
    activation_dev(dev, "silu_forward_f32", &cond, &mut cond_silu)?;
    let mut shared_gss = net.buf(b * 6 * c)?;
    island.linear(&cond_silu, "shared_ada_lin.1", true, &mut shared_gss, (b, c, 6 * c))?;
    let mut head_ss = net.buf(b * 2 * c)?;
    island.linear(&cond_silu, "head_nm.ada_lin.1", true, &mut head_ss, (b, c, 2 * c))?;
    Ok(Conditioned { text, cond, cond_silu, shared_gss, head_ss })
}

/// The condition `[B, C]` and, for text, the saved text path (text_norm, attention pool, context).
fn condition_forward(net: &Net, b: usize, dc: &DeviceCondition) -> Result<(Option<TextBufs>, CudaSlice<f32>)> {
    let (cfg, dev, c) = (net.cfg, net.dev, net.cfg.embed_dim);
    let mut cond = net.buf(b * c)?;
    match dc {
        DeviceCondition::Class { labels } => {
            embedding_dev(dev, &net.w("class_emb.weight"), labels, &mut cond, c, false)?;
            Ok((None, cond))
        }
        DeviceCondition::Text { kv_compact, cu, dropped, pool, .. } => {
            let (ct, nt, hp) = (cfg.text_channels, cu[b], cfg.pool_heads());
            let mut kv_in = net.buf(nt * ct)?;
            util::copy(dev, kv_compact, &mut kv_in)?;
            let uncond = net.w("cfg_uncond");
            for (bi, &drop) in dropped.iter().enumerate() {
                let (s, e) = (cu[bi], cu[bi + 1]);
                if drop {
                    anyhow::ensure!(e - s <= cfg.text_maxlen, "caption of {} tokens exceeds text_maxlen", e - s);
                    util::copy(dev, &uncond, &mut kv_in.slice_mut(s * ct..e * ct))?;
                }
            }
            let (mut kv, mut kv_rstd) = (net.buf(nt * ct)?, net.buf(nt)?);
            rmsnorm_dev(dev, &kv_in, &net.w("text_norm.weight"), &mut kv, &mut kv_rstd, (nt, ct), cfg.norm_eps as f32)?;
            // attention pool: one query per sample (mat_q broadcast) over its text tokens
            let mut pkv = net.buf(nt * 2 * c)?;
            net.linear(&kv, "text_proj_for_sos.ca.mat_kv", false, &mut pkv, (nt, ct, 2 * c))?;
            let (mut pool_k, mut pool_v) = (net.buf(nt * c)?, net.buf(nt * c)?);
            util::take_part(dev, &pkv, None, &mut pool_k, (nt, 2, 0, c))?;
            util::take_part(dev, &pkv, Some(&net.w("text_proj_for_sos.ca.v_bias")), &mut pool_v, (nt, 2, 1, c))?;
            let zeros = net.buf(b * c)?;
            let mut pool_q = net.buf(b * c)?;
            util::add_row(dev, &zeros, &net.w("text_proj_for_sos.ca.mat_q"), &mut pool_q)?;
            let pdims = AttnDims { heads: hp, head_dim: c / hp, scale: 1.0 / ((c / hp) as f64).sqrt() };
            let (mut pool_attn, mut pool_lse) = (Act::F32(net.buf(b * c)?), net.buf(b * hp)?);
            attention_forward_dev(
                dev,
                &pool_q,
                &pool_k,
                &pool_v,
                &mut pool_attn,
                &mut pool_lse,
                pool,
                pdims,
                net.math(),
            )?;
            net.linear(&pool_attn, "text_proj_for_sos.ca.proj", true, &mut cond, (b, c, c))?;
            // cross-attention context
            let (mut t1, mut t1g, mut kv_ca) = (net.buf(nt * c)?, net.buf(nt * c)?, net.buf(nt * c)?);
            net.linear(&kv, "text_proj_for_ca.0", true, &mut t1, (nt, ct, c))?;
            activation_dev(dev, "gelu_forward_f32", &t1, &mut t1g)?;
            net.linear(&t1g, "text_proj_for_ca.2", true, &mut kv_ca, (nt, c, c))?;
            let t = TextBufs { kv_in, kv_rstd, kv, pool_q, pool_k, pool_v, pool_attn, pool_lse, t1, t1g, kv_ca };
            Ok((Some(t), cond))
        }
    }
}

/// One block: consumes its input residual, returns its saved activations and its output. With `cache`
/// (sampling) the self-attention appends its keys and values there and attends to the cache; `rope` is
/// then the table of the scale's tokens.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_forward(
    net: &Net,
    blk: usize,
    inp: &BlockInput,
    rope: &DeviceRope,
    shared_gss: &CudaSlice<f32>,
    text: Option<&TextBufs>,
    x_in: CudaSlice<f32>,
    cache: Option<&mut KvCache>,
) -> Result<(BlockBufs, CudaSlice<f32>)> {
    let cfg = net.cfg;
    let (b, l, c, h) = (inp.b, inp.l, cfg.embed_dim, cfg.num_heads);
    let (n, hd, hf) = (b * l, c / h, cfg.ffn_hidden());
    let dev = net.dev;
    let eps = cfg.norm_eps as f32;
    let name = |x: &str| format!("blocks.{blk}.{x}");
    let w = |x: &str| net.w(&name(x));
    let mut s = BlockBufs::default();
    // gss = ada_gss + shared_ada_lin(cond): γ1, γ2, s1, s2, b1, b2 — parts read in place (rows 6C apart)
    let mut gss = net.out(b * 6 * c)?;
    util::add_row(dev, shared_gss, &w("ada_gss"), &mut gss)?;
    if let Some(f) = inp.block_drop_path(blk) {
        scale_gates_dev(dev, &mut gss, &f, 2, c, 6 * c)?; // γ1, γ2
    }
    let sh = AdaShape { b, l, c, ps: 6 * c };
    let part = |j: usize| gss.slice(j * c..);

    // self-attention
    // h1 = modulate(LN(x_in)) in one pass (x̂ not kept)
    let (mut h1, mut mean1, mut rstd1) = (net.act(n * c)?, net.out(n)?, net.out(n)?);
    modulated_layernorm_dev(dev, &x_in, &part(2), &part(4), &mut h1, (&mut mean1, &mut rstd1), sh, eps)?;
    let mut qkv = net.out(n * 3 * c)?;
    net.linear(&h1, &name("sa.mat_qkv"), false, &mut qkv, (n, c, 3 * c))?;
    let mut gain = net.buf(h)?;
    util::attn_gain(dev, &w("sa.scale_mul_1H11"), &mut gain)?;
    // q, k, v split, biased, normalised and rotated in one pass, in bf16 alone when the attention
    // runs on tensor cores (which read nothing else)
    let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 };
    let bf16 = runs_on_tensor_cores(dev, dims, net.math())?;
    let heads = qkv_heads_dev(dev, &qkv, &w("sa.q_bias"), &w("sa.v_bias"), &gain, rope, (l, h), bf16)?;
    drop(qkv);
    let (mut attn, mut lse) = (net.act_in(bf16, n * c)?, net.out(n * h)?);
    match cache {
        None => {
            attention_forward_dev(dev, &heads.q, &heads.k, &heads.v, &mut attn, &mut lse, inp.sa, dims, net.math())?
        }
        Some(kv) => {
            let at = (kv.lmax, kv.start);
            util::copy_rows(dev, &heads.k, &mut kv.k[blk], (b, l * c), at.0 * c, at.1 * c)?;
            util::copy_rows(dev, &heads.v, &mut kv.v[blk], (b, l * c), at.0 * c, at.1 * c)?;
            let (k, v) = (&kv.k[blk], &kv.v[blk]);
            attention_forward_dev(dev, &heads.q, k, v, &mut attn, &mut lse, inp.sa, dims, net.math())?;
        }
    }
    let mut sa_out = net.out(n * c)?;
    net.linear(&attn, &name("sa.proj"), true, &mut sa_out, (n, c, c))?;
    let mut x_sa = net.out(n * c)?;
    gated_residual_dev(dev, &x_in, &sa_out, &part(0), &mut x_sa, sh)?;

    // cross-attention: x + CA(ca_norm(x), kv_ca), no gate; without text x_ca is x_sa itself (the
    // backward then finds it under x_ca only)
    let x_ca = if let (Some(t), DeviceCondition::Text { cu, ca, .. }) = (text, inp.cond) {
        let nt = cu[b];
        // ca_norm's output is only mat_q's input (bf16 alone with bf16 GEMMs)
        let (mut ca_in, mut ca_mean, mut ca_rstd) = (net.act(n * c)?, net.out(n)?, net.out(n)?);
        let (nw, nb) = (w("ca_norm.weight"), w("ca_norm.bias"));
        layernorm_act(dev, &x_sa, Some(&nw), Some(&nb), &mut ca_in, (&mut ca_mean, &mut ca_rstd), (n, c), eps)?;
        let dims = AttnDims { heads: h, head_dim: hd, scale: 1.0 / (hd as f64).sqrt() };
        let ca_bf16 = runs_on_tensor_cores(dev, dims, net.math())?;
        let mut ca_q = net.out(n * c)?;
        net.linear(&ca_in, &name("ca.mat_q"), true, &mut ca_q, (n, c, c))?;
        // q kept as the tensor-core attention reads it, forward and backward (one cast, not two)
        let ca_q = net.kept(ca_q, ca_bf16)?;
        let mut ckv = net.out(nt * 2 * c)?;
        net.linear(&t.kv_ca, &name("ca.mat_kv"), false, &mut ckv, (nt, c, 2 * c))?;
        let (mut ca_k, mut ca_v) = (net.out(nt * c)?, net.out(nt * c)?);
        util::take_part(dev, &ckv, None, &mut ca_k, (nt, 2, 0, c))?;
        util::take_part(dev, &ckv, Some(&w("ca.v_bias")), &mut ca_v, (nt, 2, 1, c))?;
        let (mut ca_attn, mut ca_lse) = (net.act_in(ca_bf16, n * c)?, net.out(n * h)?);
        attention_forward_dev(dev, &ca_q, &ca_k, &ca_v, &mut ca_attn, &mut ca_lse, ca, dims, net.math())?;
        let mut ca_out = net.out(n * c)?;
        net.linear(&ca_attn, &name("ca.proj"), true, &mut ca_out, (n, c, c))?;
        let mut x_ca = net.out(n * c)?;
        util::sum(dev, &x_sa, &ca_out, &mut x_ca)?;
        (s.ca_ln, s.ca_in, s.ca_q, s.ca_k, s.ca_v) =
            ([Some(ca_mean), Some(ca_rstd)], Some(ca_in), Some(ca_q), Some(ca_k), Some(ca_v));
        (s.ca_attn, s.ca_lse, s.x_sa) = (Some(ca_attn), Some(ca_lse), Some(x_sa));
        x_ca
    } else {
        x_sa
    };

    // feed-forward
    let (mut h2, mut mean2, mut rstd2) = (net.act(n * c)?, net.out(n)?, net.out(n)?);
    modulated_layernorm_dev(dev, &x_ca, &part(3), &part(5), &mut h2, (&mut mean2, &mut rstd2), sh, eps)?;
    let mut f1 = net.out(n * hf)?;
    net.linear(&h2, &name("ffn.fc1"), false, &mut f1, (n, c, hf))?;
    let (f1, g) = bias_gelu_dev(dev, f1, &w("ffn.fc1.bias"), net.gemm.bf16)?; // f1 = x·Wᵀ + b, g = gelu(f1)
    let mut f2 = net.out(n * c)?;
    net.linear(&g, &name("ffn.fc2"), true, &mut f2, (n, hf, c))?;
    drop(g);
    let mut x_out = net.out(n * c)?;
    gated_residual_dev(dev, &x_ca, &f2, &part(1), &mut x_out, sh)?;

    (s.x_in, s.gain, s.ln1, s.h1) = (Some(x_in), Some(gain), [Some(mean1), Some(rstd1)], Some(h1));
    (s.q_raw, s.k_raw, s.q_norm, s.k_norm) =
        (Some(heads.q_raw), Some(heads.k_raw), Some(heads.q_norm), Some(heads.k_norm));
    (s.q, s.k, s.v) = (Some(heads.q), Some(heads.k), Some(heads.v));
    (s.attn, s.lse, s.sa_out, s.x_ca) = (Some(attn), Some(lse), Some(sa_out), Some(x_ca));
    (s.ln2, s.h2, s.f1, s.f2) = ([Some(mean2), Some(rstd2)], Some(h2), Some(f1), Some(f2));
    s.gss = Some(gss);
    Ok((s, x_out))
}
