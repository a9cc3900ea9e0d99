//! Every op the Infinity model needs. Each family has a plain-Rust CPU implementation that is its
//! specification; CUDA twins (compiled at run time through NVRTC) are tested against these.
//!
//! Families so far:
//! - [`resample`]: area down-sampling and bilinear up-sampling with PyTorch's exact index math;
//! - [`bsq`]: binary spherical quantisation and multi-scale residual BSQ (the tokenizer's and
//!   bitwise self-correction's core).

pub mod bsq;
pub mod resample;
