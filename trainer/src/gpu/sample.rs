//! Sampling on the device: the transformer of `model::sample` one scale at a time through the training
//! forward's blocks, with the self-attention's keys and values kept on the device across scales.
//! Guidance, per-bit sampling and the codes' accumulation stay on the host (`sample_with`, a few values
//! per token), so the CPU and the GPU draw the same bits from the same logits.
//!
//! Dims as in `model::sample`: `R` rows (conditional, then unconditional), `n` tokens of the scale,
//! `Lmax` tokens of the schedule, `C` width, `d` bits, `m = R·n`.

use anyhow::{ensure, Result};
use cudarc::driver::CudaView;
use infinity_kernels::attention::{cross_segments, AttnDims, Segment};
use infinity_kernels::bsq::num_tokens;
use infinity_kernels::cuda::attention::{runs_on_tensor_cores, AttnRanges};
use infinity_kernels::cuda::device::Act;
use infinity_kernels::cuda::head_ce::head_on_tensor_cores;
use infinity_kernels::cuda::layers::{modulated_layernorm_dev, AdaShape, DeviceRope};
use infinity_kernels::cuda::{util, CudaError};
use infinity_kernels::rope::RopeTable;

use super::forward::{block_forward, conditioned, BlockInput, Conditioned, DeviceCondition, KvCache};
use super::{device_condition, GpuModel, Net};
use crate::model::sample::{
    sample_with, GuidedRows, HiddenGuidance, SampleCondition, SampleOptions, Sampled, ScaleLogits,
};

impl GpuModel {
    /// Sample `B` images over the tokenizer's schedule `scales` on the device (`model::sample::sample`
    /// with the transformer here): the same bits as the CPU model's wherever their logits round alike.
    /// `rope` is the transformer's schedule's table (`model::rope_for`).
    pub fn sample(
        &mut self,
        cond: &SampleCondition,
        scales: &[(usize, usize)],
        rope: &RopeTable,
        o: &SampleOptions,
    ) -> Result<Sampled> {
        let rows = GuidedRows::new(&self.cfg, cond, o)?;
        let lmax = num_tokens(&self.cfg.token_scales(scales));
        ensure!(rope.num_tokens() == lmax, "sample: a RoPE table of {} tokens for {lmax}", rope.num_tokens());
        self.refresh_bf16()?;
        let cfg = self.cfg.clone();
        let mut net = GpuScales::new(self.net(), &rows, rope, lmax)?;
        sample_with(&cfg, &rows, scales, o, &mut net)
    }
}

/// The device model's [`ScaleLogits`].
pub struct GpuScales<'a> {
    net: Net<'a>,
    /// The transformer's schedule's RoPE table (each scale's rows are uploaded as it comes).
    rope: &'a RopeTable,
    rows: usize,
    /// The rows' condition (with text, its cross-attention ranges are those of the current scale).
    cond: DeviceCondition,
    conditioned: Conditioned,
    cache: KvCache,
}

impl<'a> GpuScales<'a> {
    /// The condition forward of `rows` and zeroed caches for a schedule of `lmax` tokens.
    pub fn new(net: Net<'a>, rows: &GuidedRows, rope: &'a RopeTable, lmax: usize) -> Result<GpuScales<'a>> {
        let (cfg, dev, r) = (net.cfg, net.dev, rows.rows());
        let c = cfg.embed_dim;
        let cond = device_condition(dev, &rows.condition(), r, 1)?;
        let conditioned = conditioned(&net, r, &cond)?;
        // the cache in the dtype the self-attention's keys and values come in (bf16 alone for the
        // tensor-core attention); zeroed, as the attention's tiles may read past a row's keys
        let dims = AttnDims { heads: cfg.num_heads, head_dim: cfg.head_dim(), scale: 1.0 };
        let bf16 = runs_on_tensor_cores(dev, dims, net.math())?;
        let zeros = || -> Result<Act, CudaError> {
            let n = r * lmax * c;
            Ok(if bf16 { Act::Bf16(dev.stream.alloc_zeros::<u16>(n)?) } else { Act::F32(dev.stream.alloc_zeros(n)?) })
        };
        let (mut k, mut v) = (Vec::with_capacity(cfg.depth), Vec::with_capacity(cfg.depth));
        for _ in 0..cfg.depth {
            k.push(zeros()?);
            v.push(zeros()?);
        }
        let cache = KvCache { k, v, lmax, start: 0 };
        Ok(GpuScales { net, rope, rows: r, cond, conditioned, cache })
    }

    /// The scale's first tokens `x [m, C]`: the condition plus `pos_start` at scale 0 (one token), the
    /// embedded input after; plus the scale's level embedding.
    fn tokens(&self, si: usize, n: usize, input: Option<&[f32]>) -> Result<cudarc::driver::CudaSlice<f32>> {
        let (net, dev) = (&self.net, self.net.dev);
        let (c, d, m) = (net.cfg.embed_dim, net.cfg.d, self.rows * n);
        let lvl: CudaView<f32> = net.w("lvl_embed.weight").slice(si * c..(si + 1) * c);
        let mut x = net.out(m * c)?;
        match input {
            None => {
                ensure!(n == 1, "sample: scale {si} of {n} tokens has no input");
                let mut start = net.out(m * c)?;
                util::add_row(dev, &self.conditioned.cond, &net.w("pos_start"), &mut start)?;
                util::add_row(dev, &start, &lvl, &mut x)?;
            }
            Some(inp) => {
                ensure!(inp.len() == m * d, "sample: the input of scale {si} is not [R, n, d]");
                let inp = dev.stream.clone_htod(inp).map_err(CudaError::from)?;
                // word_embed in f32, as upstream's autocast-disabled region (and the training forward)
                let mut we = net.out(m * c)?;
                net.f32_island().linear(&inp, "word_embed", true, &mut we, (m, d, c))?;
                util::add_row(dev, &we, &lvl, &mut x)?;
            }
        }
        Ok(x)
    }
}

impl ScaleLogits for GpuScales<'_> {
    fn logits(
        &mut self,
        si: usize,
        start: usize,
        n: usize,
        input: Option<&[f32]>,
        hidden: HiddenGuidance,
    ) -> Result<Vec<f32>> {
        let (net, dev) = (self.net, self.net.dev);
        let (cfg, r, lmax) = (net.cfg, self.rows, self.cache.lmax);
        let (c, d, m) = (cfg.embed_dim, cfg.d, r * n);
        ensure!(start + n <= lmax, "sample: scale {si} ends past the schedule's {lmax} tokens");
        let mut x = self.tokens(si, n, input)?;

        // this scale's RoPE rows, its queries' ranges over the cache and over the text
        let p = self.rope.pairs;
        let rows_of = |t: &[f32]| t[start * p..(start + n) * p].to_vec();
        let rope =
            DeviceRope::new(dev, &RopeTable { pairs: p, cos: rows_of(&self.rope.cos), sin: rows_of(&self.rope.sin) })?;
        let segs: Vec<Segment> = (0..r).map(|i| Segment { q0: i * n, nq: n, k0: i * lmax, nk: start + n }).collect();
        let sa = AttnRanges::new(dev, &segs, m, r * lmax)?;
        if let DeviceCondition::Text { cu, ca, .. } = &mut self.cond {
            **ca = AttnRanges::new(dev, &cross_segments(n, cu), m, cu[r])?;
        }
        self.cache.start = start;

        let inp = BlockInput { b: r, l: n, sa: &sa, cond: &self.cond, drop_path: None };
        let (gss, text) = (&self.conditioned.shared_gss, self.conditioned.text.as_ref());
        for blk in 0..cfg.depth {
            x = block_forward(&net, blk, &inp, &rope, gss, text, x, Some(&mut self.cache))?.1;
            if hidden.after.contains(&blk) {
                // (a scale's tokens, a few per block it applies after: mixed on the host, as the CPU does)
                let mut host = dev.stream.clone_dtoh(&x).map_err(CudaError::from)?;
                hidden.apply(blk, &mut host);
                dev.stream.memcpy_htod(&host, &mut x).map_err(CudaError::from)?;
            }
        }

        // the head: modulated LayerNorm, then the logits (the training head fuses them with the loss), in
        // the training head's arithmetic: bf16 where it runs on tensor cores, else f32 (upstream's)
        let tensor_cores = head_on_tensor_cores(net.math(), c, cfg.d);
        let (mut mean, mut rstd, mut h) = (net.out(m)?, net.out(m)?, net.act_in(tensor_cores, m * c)?);
        let head_ss = &self.conditioned.head_ss;
        let (scale, shift) = (head_ss.slice(..), head_ss.slice(c..));
        let shape = AdaShape { b: r, l: n, c, ps: 2 * c };
        modulated_layernorm_dev(dev, &x, &scale, &shift, &mut h, (&mut mean, &mut rstd), shape, cfg.norm_eps as f32)?;
        let mut logits = net.out(m * 2 * d)?;
        let head = if tensor_cores { net } else { net.f32_island() };
        head.linear(&h, "head", true, &mut logits, (m, c, 2 * d))?;
        Ok(dev.stream.clone_dtoh(&logits).map_err(CudaError::from)?)
    }
}
