//! CUDA twins of the CPU kernels (feature `cuda`): the `.cu` sources in `kernels/cuda/` are embedded in
//! the binary, compiled with NVRTC at run time for the device's architecture, loaded once per device
//! and cached. cudarc opens the CUDA libraries at run time, so this builds with no CUDA installed; a
//! missing driver or library is an error ([`CudaError::Unavailable`]), never a panic.
//!
//! Each kernel's specification is its CPU twin; `kernels/tests/cuda_twins.rs` compares them when a
//! device is present and says it skipped otherwise, and `kernels/tests/cuda_compile.rs` compiles every
//! source with NVRTC alone (no GPU), which CI runs.

pub mod attention;
pub mod bsq;
pub mod compile;
pub mod device;
pub mod head_ce;
pub mod layers;
pub mod linear;
pub mod memory;
pub mod ops;
pub mod qkv;
pub mod util;

pub use compile::{compile_ptx, CompileError, SOURCES};

/// The arithmetic of the kernels that have a tensor-core variant (attention, the fused head + loss).
///
/// `F32`: CUDA cores, the CPU twin's arithmetic (within 1e-5 of the CPU). `Bf16`: tensor cores
/// (`*_bf16.cu`): the inputs of each product are rounded to bf16 and accumulate in f32, as upstream
/// under bf16 autocast; softmax statistics, losses, outputs and gradients stay f32. `Bf16` falls back to
/// the f32 kernels where a shape, device or buffer alignment has no tensor-core kernel (each entry
/// point says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Math {
    F32,
    Bf16,
}
pub use device::{CudaError, Device};
