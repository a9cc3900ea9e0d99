//! Every op the Infinity model needs. Each family has a plain-Rust CPU implementation that is its
//! specification (generic over f32 and f64, so gradient checks run in f64); CUDA twins (compiled at run
//! time through NVRTC) are tested against these.
//!
//! Conventions (as llm.c): forward and backward of a family sit in one file; backward writes input
//! gradients (`=`) and adds parameter gradients (`+=`) so micro-batches accumulate.
//!
//! Families:
//! - [`linear`] (over [`matmul`], the `gemm` crate), [`norm`] (LayerNorm, RMSNorm), [`adaln`]
//!   (modulation, gated residual), [`act`] (GELU-tanh, SiLU), [`rope`] (2-D RoPE, mode 2),
//!   [`attention`] (block-causal self-attention, varlen cross-attention, attention pool, cosine
//!   normalisation), [`qkv`] (the self-attention heads from the qkv projection: split, biases,
//!   normalisation and RoPE in one op), [`embedding`] (lookups), [`bitwise_ce`] (the bitwise loss);
//! - [`resample`] and [`bsq`]: area/bilinear resizing with PyTorch's index math, BSQ, multi-scale
//!   residual BSQ and bitwise self-correction (no gradients: they act on the frozen tokenizer's latents);
//!   [`patchify`]: the 8B model's 2×2 unshuffle of the tokenizer's scales into tokens.

pub mod act;
pub mod adaln;
pub mod adamw;
pub mod attention;
pub mod bitwise_ce;
pub mod bsq;
pub mod compare;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod embedding;
pub mod gradcheck;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod patchify;
pub mod qkv;
mod real;
pub mod resample;
pub mod rope;
mod rows;
pub mod tensor_cores;
pub mod wide;

pub use real::{exp_f32, Real};
