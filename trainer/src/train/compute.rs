//! Where a micro-batch's forward and backward run: the CPU model, or the model on a GPU
//! (`run.device`). Everything around them (data, self-correction, data parallelism, clipping, AdamW,
//! checkpoints) is the same code for both.

use anyhow::{bail, Result};
use infinity_kernels::bitwise_ce::BitwiseCe;

use super::config::{DeviceChoice, RunConfig};
use crate::model::{backward, forward_into, Acts, Layout, ModelConfig, ModelInput, Params};

pub enum Compute {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::gpu::GpuModel>),
}

impl Compute {
    /// Resolve `run.device` for this process (`LOCAL_RANK` picks the GPU when several are visible).
    pub fn open(run: &RunConfig, _mc: &ModelConfig, _lay: &Layout) -> Result<Compute> {
        match (run.device, gpu_ordinal()?) {
            (DeviceChoice::Cpu, _) => Ok(Compute::Cpu),
            (DeviceChoice::Auto, None) => {
                println!("device: cpu (run.device = \"auto\": {})", why_no_gpu());
                Ok(Compute::Cpu)
            }
            (DeviceChoice::Cuda, None) => bail!("run.device = \"cuda\" but {}", why_no_gpu()),
            #[cfg(feature = "cuda")]
            (_, Some(ordinal)) => {
                let bf16 = run.precision == super::config::Precision::Bf16;
                let mut m = crate::gpu::GpuModel::new(_mc, _lay, ordinal, bf16)?;
                m.recompute = run.recompute;
                let notes = [(bf16, ", bf16 matmuls"), (run.recompute, ", recomputing blocks")];
                let notes: String = notes.iter().filter(|n| n.0).map(|n| n.1).collect();
                println!("device: cuda:{ordinal} ({}{notes})", m.arch());
                Ok(Compute::Cuda(Box::new(m)))
            }
            #[cfg(not(feature = "cuda"))]
            (_, Some(_)) => unreachable!("no GPU ordinal without the cuda feature"),
        }
    }

    /// At the start of a step: the GPU gets the current parameters and zeroed gradients.
    pub fn begin_step(&mut self, _params: &Params<f32>) -> Result<()> {
        match self {
            Compute::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Compute::Cuda(m) => {
                m.upload_params(_params)?;
                m.zero_grads()
            }
        }
    }

    /// Forward and backward of one micro-batch: gradients added into `grads` (CPU) or into the device's
    /// accumulator (GPU); returns the loss statistics.
    pub fn micro_step(
        &mut self,
        (mc, lay): (&ModelConfig, &Layout),
        params: &Params<f32>,
        inp: &ModelInput<f32>,
        acts: &mut Acts<f32>,
        grads: &mut Params<f32>,
    ) -> Result<BitwiseCe> {
        match self {
            Compute::Cpu => {
                forward_into(mc, lay, params, inp, acts);
                backward(mc, lay, params, inp, acts, grads);
                Ok(acts.ce.clone())
            }
            #[cfg(feature = "cuda")]
            Compute::Cuda(m) => m.step(inp, true),
        }
    }

    /// At the end of a step's micro-batches: the GPU's accumulated gradients into `grads`.
    pub fn end_step(&mut self, _grads: &mut Params<f32>) -> Result<()> {
        match self {
            Compute::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Compute::Cuda(m) => m.add_grads_into(&mut _grads.data),
        }
    }
}

/// The GPU this process would use, if any: the only visible one (our agent sets
/// `CUDA_VISIBLE_DEVICES` per rank) or device `LOCAL_RANK`.
fn gpu_ordinal() -> Result<Option<usize>> {
    #[cfg(feature = "cuda")]
    {
        if !crate::gpu::cuda_available() {
            return Ok(None);
        }
        let count = cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize;
        let local: usize = std::env::var("LOCAL_RANK").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        match count {
            0 => Ok(None),
            1 => Ok(Some(0)),
            n if local < n => Ok(Some(local)),
            n => bail!("LOCAL_RANK {local} but only {n} CUDA devices are visible"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    Ok(None)
}

fn why_no_gpu() -> &'static str {
    if cfg!(feature = "cuda") {
        "no CUDA driver or device was found"
    } else {
        "this build has no CUDA support (build with --features cuda)"
    }
}
