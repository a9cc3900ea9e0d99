//! What the CPU forward saves for the backward ([`Acts`]: per block, the text path, the head), plus
//! its outputs. Buffers are reused across steps ([`super::forward_into`]).
//!
//! Dims legend: `B` batch, `L` tokens (start token included), `N = B·L`, `C` width, `H` heads,
//! `Ct` text width, `T` text tokens of the batch, `Hp` pool heads, `Hf` FFN width, `d` bits.

use infinity_kernels::attention::Segment;
use infinity_kernels::bitwise_ce::BitwiseCe;

/// Saved activations of one block.
#[derive(Clone, Debug, Default)]
pub struct BlockActs<T> {
    /// `[N, C]` residual stream entering the block.
    pub x_in: Vec<T>,
    /// `[B, 6C]` per-sample AdaLN parameters (ada_gss + shared): γ1, γ2, s1, s2, b1, b2.
    pub gss: Vec<T>,
    /// `[N]` LayerNorm statistics of `x_in`.
    pub ln1_mean: Vec<T>,
    pub ln1_rstd: Vec<T>,
    /// `[N, C]` LN(x) and its modulation (the qkv input).
    pub xhat1: Vec<T>,
    pub h1: Vec<T>,
    /// `[N, C]` each: q, k before normalisation; v.
    pub q_raw: Vec<T>,
    pub k_raw: Vec<T>,
    pub v: Vec<T>,
    /// `[N·H]` clamped norms.
    pub q_norm: Vec<T>,
    pub k_norm: Vec<T>,
    /// `[N, C]` q, k normalised, scaled and rotated.
    pub q: Vec<T>,
    pub k: Vec<T>,
    /// `[N, C]`, `[N, H]` attention output and log-sum-exp.
    pub attn: Vec<T>,
    pub lse: Vec<T>,
    /// `[N, C]` proj(attn).
    pub sa_out: Vec<T>,
    /// `[N, C]` residual after self-attention.
    pub x_sa: Vec<T>,
    // cross-attention (text conditioning only)
    /// `[N]` ca_norm statistics of `x_sa`.
    pub ca_mean: Vec<T>,
    pub ca_rstd: Vec<T>,
    /// `[N, C]` ca_norm(x_sa).
    pub ca_in: Vec<T>,
    /// `[N, C]` queries, `[T, C]` keys and values, `[N, C]` output, `[N, H]` lse.
    pub ca_q: Vec<T>,
    pub ca_k: Vec<T>,
    pub ca_v: Vec<T>,
    pub ca_attn: Vec<T>,
    pub ca_lse: Vec<T>,
    /// `[N, C]` residual after cross-attention.
    pub x_ca: Vec<T>,
    /// `[N]` LayerNorm statistics of the residual entering the FFN.
    pub ln2_mean: Vec<T>,
    pub ln2_rstd: Vec<T>,
    /// `[N, C]` its LN and modulation (the fc1 input).
    pub xhat2: Vec<T>,
    pub h2: Vec<T>,
    /// `[N, Hf]` fc1 output and its GELU.
    pub f1: Vec<T>,
    pub g: Vec<T>,
    /// `[N, C]` fc2 output.
    pub f2: Vec<T>,
}

/// Saved activations of the text-conditioning path.
#[derive(Clone, Debug, Default)]
pub struct TextActs<T> {
    /// `[T, Ct]` features after CFG dropout, and after text_norm.
    pub kv_in: Vec<T>,
    /// `[T]` text_norm's reciprocal RMS.
    pub kv_rstd: Vec<T>,
    pub kv: Vec<T>,
    /// `[T, C]` pool keys/values, `[B, C]` broadcast pool queries, output, `[B, Hp]` lse.
    pub pool_k: Vec<T>,
    pub pool_v: Vec<T>,
    pub pool_q: Vec<T>,
    pub pool_attn: Vec<T>,
    pub pool_lse: Vec<T>,
    /// `[T, C]` text_proj_for_ca: first linear, GELU, output (the cross-attention context).
    pub t1: Vec<T>,
    pub t1g: Vec<T>,
    pub kv_ca: Vec<T>,
    /// `[B+1]` offsets of each sample's text tokens (cu_seqlens).
    pub cu: Vec<usize>,
}

/// Everything the backward needs, plus the outputs.
#[derive(Clone, Debug, Default)]
pub struct Acts<T> {
    pub b: usize,
    pub l: usize,
    pub text: Option<TextActs<T>>,
    /// `[B, C]` the condition (upstream `cond_BD`) and SiLU of it.
    pub cond: Vec<T>,
    pub cond_silu: Vec<T>,
    /// `[B, 6C]` shared_ada_lin output, `[B, 2C]` head_nm.ada_lin output.
    pub shared_gss: Vec<T>,
    pub head_ss: Vec<T>,
    pub blocks: Vec<BlockActs<T>>,
    /// `[N, C]` final residual, its LN and modulation; `[N]` LN statistics.
    pub x_out: Vec<T>,
    pub lnh_mean: Vec<T>,
    pub lnh_rstd: Vec<T>,
    pub xhat_h: Vec<T>,
    pub h_head: Vec<T>,
    /// `[N, 2d]` logits and `∂loss/∂logits`.
    pub logits: Vec<T>,
    pub dlogits: Vec<T>,
    pub ce: BitwiseCe,
    /// Self-attention segments (block-causal), cross-attention and pool segments.
    pub sa_segs: Vec<Segment>,
    pub ca_segs: Vec<Segment>,
    pub pool_segs: Vec<Segment>,
}
