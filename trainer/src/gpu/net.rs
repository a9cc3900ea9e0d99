//! [`Net`]: what the kernels need to run the model, borrowed from a [`GpuModel`] (the `net_of!` macro
//! builds one field by field).

use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaView, DevicePtr};
use infinity_kernels::cuda::device::{Act, Bf16Only, Buf, BufMut, WithBf16};
use infinity_kernels::cuda::linear::{linear_dev, Gemm};
use infinity_kernels::cuda::{CudaError, Device, Math};

use super::master_shard::DeviceReads;
#[cfg(doc)]
use super::GpuModel;
use crate::model::{Layout, ModelConfig};

/// What the kernels need to run the model: the device, cuBLAS (and its precision), the config and the
/// parameters.
#[derive(Clone, Copy)]
pub struct Net<'a> {
    pub dev: &'a Device,
    pub gemm: &'a Gemm,
    /// f32 GEMMs (`gemm` itself when the matmuls are f32) for [`Net::f32_island`].
    pub(super) gemm32: &'a Gemm,
    pub cfg: &'a ModelConfig,
    pub lay: &'a Layout,
    pub(super) params: &'a CudaSlice<f32>,
    /// ZeRO-1 with bf16 matmuls: where the f32 values the kernels read are (`params` is the rank's
    /// shard alone).
    pub(super) reads: Option<&'a DeviceReads>,
    /// The parameters rounded to bf16 (bf16 matmuls only), current for `params`.
    pub(super) params16: Option<&'a CudaSlice<u16>>,
}

impl<'a> Net<'a> {
    /// The arithmetic of attention and the fused head: tensor cores with bf16 inputs when the matmuls
    /// take bf16.
    pub fn math(&self) -> Math {
        if self.gemm.bf16 {
            Math::Bf16
        } else {
            Math::F32
        }
    }

    /// The same model computing in f32 throughout: upstream's fp32 islands under bf16 autocast
    /// (infinity-reference.md §4.3: the text conditioning, the AdaLN parameters and `word_embed` run
    /// with autocast disabled), which take this for their matmuls and attention, forward and backward.
    pub fn f32_island(&self) -> Net<'a> {
        Net { gemm: self.gemm32, params16: None, ..*self }
    }

    /// Parameter `name` in f32 (a view into the flat buffer, or into the f32 reads of a ZeRO-1 rank).
    pub fn w(&self, name: &str) -> CudaView<'a, f32> {
        let range = self.lay.range(name);
        match self.reads {
            None => self.params.slice(range),
            // an internal invariant, not an input: `model::f32_reads::read_in_f32` names what is read
            Some(r) => r.view(name, range.len()).unwrap_or_else(|| {
                panic!("`{name}` was read in f32, but under ZeRO-1 this rank keeps only its bf16 copy")
            }),
        }
    }

    /// A zeroed device buffer of `n` values (for outputs that kernels add into).
    pub fn buf(&self, n: usize) -> Result<CudaSlice<f32>> {
        Ok(self.dev.stream.alloc_zeros::<f32>(n.max(1)).map_err(CudaError::from)?)
    }

    /// A device buffer of `n` values for a kernel that writes every one of them (its `///` says
    /// "written"): not zeroed first, which would cost a pass over it. The blocks' activations and
    /// gradients use it; accumulators use [`Net::buf`].
    pub fn out(&self, n: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: every caller hands the buffer to a kernel (or GEMM with β = 0, or the bias rows then
        // GEMM) that writes all n values before anything reads them.
        Ok(unsafe { self.dev.stream.alloc::<f32>(n.max(1)) }.map_err(CudaError::from)?)
    }

    /// An activation of `n` values that only matmuls read: bf16 alone when the matmuls take bf16 (its
    /// producer writes every value), a zeroed f32 buffer otherwise.
    pub fn act(&self, n: usize) -> Result<Act> {
        self.act_in(self.gemm.bf16, n)
    }

    /// [`Net::act`] in bf16 alone when `bf16` (a value whose producer and readers all take bf16, such
    /// as the tensor-core attention's output), f32 otherwise.
    pub fn act_in(&self, bf16: bool, n: usize) -> Result<Act> {
        Ok(if bf16 {
            // SAFETY: the producing kernel (modulate, bias + GELU, attention, …) writes all n values
            // before any read.
            Act::Bf16(unsafe { self.dev.stream.alloc::<u16>(n.max(1)) }.map_err(CudaError::from)?)
        } else {
            Act::F32(self.buf(n)?)
        })
    }

    /// `x` kept as an activation: its bf16 values alone when `bf16` (x is freed in stream order after
    /// the cast), x itself otherwise.
    pub fn kept(&self, x: CudaSlice<f32>, bf16: bool) -> Result<Act> {
        Ok(infinity_kernels::cuda::ops::act_from(self.dev, x, bf16)?)
    }

    /// Weight `name` as a GEMM operand: with its bf16 copy when the matmuls take bf16.
    pub fn with_weight<R>(&self, name: &str, f: impl FnOnce(&dyn Buf) -> Result<R>) -> Result<R> {
        let Some(p16) = self.params16 else { return f(&self.w(name)) };
        let r = self.lay.range(name);
        let (count, bf16) = (r.len(), p16.slice(r).device_ptr(&self.dev.stream).0);
        match self.reads.is_some_and(|reads| reads.view(name, count).is_none()) {
            true => f(&Bf16Only { bf16, count }),
            false => f(&WithBf16 { values: &self.w(name), bf16 }),
        }
    }

    /// `y = x·Wᵀ (+ b)` with the parameters `{prefix}.weight` (and `{prefix}.bias`). `dims` is
    /// `(rows, in, out)`: `x` is `[rows, in]`, the weight `[out, in]` (as PyTorch's `nn.Linear` stores
    /// it), the bias `[out]` and `y` `[rows, out]`.
    pub fn linear(
        &self,
        x: &dyn Buf,
        prefix: &str,
        bias: bool,
        y: &mut dyn BufMut,
        dims: (usize, usize, usize),
    ) -> Result<()> {
        let b = bias.then(|| self.w(&format!("{prefix}.bias")));
        self.with_weight(&format!("{prefix}.weight"), |w| {
            Ok(linear_dev(self.dev, self.gemm, x, w, b.as_ref().map(|v| v as &dyn Buf), y, dims)?)
        })
    }
}

/// A [`GpuModel`]'s [`Net`], borrowing the fields one by one (a method would borrow the whole model,
/// which the backward cannot share while it writes the gradients). In scope in `gpu/mod.rs` after its
/// `#[macro_use] mod net;`.
macro_rules! net_of {
    ($model:expr) => {
        Net {
            dev: &$model.dev,
            gemm: &$model.gemm,
            gemm32: $model.gemm32.as_ref().unwrap_or(&$model.gemm),
            cfg: &$model.cfg,
            lay: &$model.lay,
            params: &$model.params,
            reads: $model.reads.as_ref(),
            params16: $model.params16.as_ref(),
        }
    };
}
