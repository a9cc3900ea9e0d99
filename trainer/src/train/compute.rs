//! Where a step's compute runs: the CPU model, or the model on a GPU (`run.device`). On the GPU,
//! clipping and AdamW run there too (with ZeRO-1, when the gradients travel by NCCL) and the
//! parameters stay on the device (grids and validation read them there); the loop asks for a host copy
//! ([`Compute::sync_host`]) for checkpoints. Data, self-correction, data-parallel averaging, the schedule and
//! checkpoints are the same code for both.

use anyhow::{bail, Result};
use infinity_kernels::bitwise_ce::BitwiseCe;

use super::config::{DeviceChoice, Precision, RunConfig};
use super::dist::Dist;
use crate::infer::Sampler;
use crate::model::{backward, forward_into, Acts, Layout, ModelConfig, ModelInput, Params};
use crate::optim::{AdamW, Ema};

/// Which device to open, as a setting (`setting`: the config key or flag that chose it) asks.
pub struct DeviceRequest<'s> {
    pub setting: &'s str,
    pub device: DeviceChoice,
    /// bf16 matmuls on a GPU.
    pub bf16: bool,
    /// Recompute blocks in the backward.
    pub recompute: bool,
    /// Whether the model trains (gradient buffers on a GPU) or only samples.
    pub trains: bool,
    /// The GPU's parameter and gradient buffers wait for the optimizer or the first upload
    /// (`GpuModel::new_deferred`): for a rank of a ZeRO-1 group, whose optimizer may want a shard's,
    /// and a look at the device alone.
    pub deferred: bool,
}

pub enum Compute {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda {
        model: Box<crate::gpu::GpuModel>,
        /// Whether the device holds the current parameters (false until the first upload, after
        /// every host-side update, and after a ZeRO-1 shard's optimizer re-made the buffers).
        fresh: bool,
    },
}

impl Compute {
    /// Resolve `run.device` for this process (its local rank picks the GPU when several are visible:
    /// [`device_ordinal`]).
    pub fn open(run: &RunConfig, mc: &ModelConfig, lay: &Layout) -> Result<Compute> {
        Compute::open_deferred(run, false, mc, lay)
    }

    /// [`Compute::open`], with the GPU's buffers `deferred` ([`DeviceRequest::deferred`]): for a rank
    /// of a group that shards the optimizer (`dist.zero1` with more than one rank), or a look at the
    /// device alone (`train --check`).
    pub fn open_deferred(run: &RunConfig, deferred: bool, mc: &ModelConfig, lay: &Layout) -> Result<Compute> {
        let (bf16, recompute) = (run.precision == Precision::Bf16, run.recompute);
        let want = DeviceRequest { setting: "run.device", device: run.device, bf16, recompute, trains: true, deferred };
        Compute::open_as(&want, mc, lay)
    }

    /// [`Compute::open`] for a device chosen by `want.setting` (a config key or a flag).
    pub fn open_as(want: &DeviceRequest, _mc: &ModelConfig, _lay: &Layout) -> Result<Compute> {
        let device = want.device;
        // `run.device = "auto"` for a config key, `--device auto` for a flag
        let setting = match want.setting.starts_with("--") {
            true => format!("{} {device}", want.setting),
            false => format!("{} = \"{device}\"", want.setting),
        };
        match (device, gpu_ordinal()?) {
            (DeviceChoice::Cpu, _) => Ok(Compute::Cpu),
            (DeviceChoice::Auto, None) => {
                console!("device: cpu ({setting}: {})", why_no_gpu());
                Ok(Compute::Cpu)
            }
            // no restart finds a GPU this build or machine does not have
            (DeviceChoice::Cuda, None) => Err(super::unrecoverable(anyhow::anyhow!("{setting} but {}", why_no_gpu()))),
            #[cfg(feature = "cuda")]
            (_, Some(ordinal)) => {
                let (bf16, recompute) = (want.bf16, want.recompute);
                let opened = match (want.trains, want.deferred) {
                    (true, false) => crate::gpu::GpuModel::new(_mc, _lay, ordinal, bf16),
                    (true, true) => crate::gpu::GpuModel::new_deferred(_mc, _lay, ordinal, bf16),
                    (false, _) => crate::gpu::GpuModel::for_sampling(_mc, _lay, ordinal, bf16),
                };
                let mut m = match opened {
                    Ok(m) => m,
                    // a GPU that cannot run this configuration is, for `auto`, no GPU
                    Err(e) if device == DeviceChoice::Auto && gpu_unsupported(&e) => {
                        console!("device: cpu ({setting}: cuda:{ordinal} cannot run it: {e:#})");
                        return Ok(Compute::Cpu);
                    }
                    Err(e) => {
                        let advice = match want.trains {
                            true => {
                                "the parameters, their gradients and AdamW's moments need a GPU with more \
                                     memory, or a smaller model"
                            }
                            false => {
                                "the parameters (f32, and a bf16 copy with bf16 matmuls) need a GPU with more \
                                      memory, or --device cpu"
                            }
                        };
                        return Err(out_of_memory_context(e, advice));
                    }
                };
                m.recompute = recompute;
                let notes = [(bf16, ", bf16 matmuls"), (recompute, ", recomputing blocks")];
                let notes: String = notes.iter().filter(|n| n.0).map(|n| n.1).collect();
                console!("device: cuda:{ordinal} {} ({}{notes})", m.device_name(), m.arch());
                Ok(Compute::Cuda { model: Box::new(m), fresh: false })
            }
            #[cfg(not(feature = "cuda"))]
            (_, Some(_)) => unreachable!("no GPU ordinal without the cuda feature"),
        }
    }

    /// What `run.precision = "bf16"` becomes on the CPU (a config written for GPUs, as upstream's bf16
    /// recipe is, may land there under `run.device = "auto"`): the line saying so, or none.
    pub fn precision_note(&self, run: &RunConfig) -> Option<&'static str> {
        let on_cpu = matches!(self, Compute::Cpu);
        (on_cpu && run.precision == Precision::Bf16).then_some(
            "precision: f32 (run.precision = \"bf16\" is the GPU's arithmetic; the CPU model computes in f32)",
        )
    }

    /// Run clipping and AdamW on the device from now on (GPU only; a no-op on the CPU). `opt` is the
    /// whole state, or with `zero1 = Some(world)` this rank's ZeRO-1 shard, which the device updates
    /// only when the gradients travel by NCCL (`nccl`); otherwise the host's ZeRO-1 does (and the GPU
    /// holds the whole model's weights and gradients, allocated here).
    pub fn attach_optimizer(&mut self, _opt: &AdamW, _zero1: Option<usize>, _nccl: bool) -> Result<()> {
        match self {
            Compute::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } if _zero1.is_some() && !_nccl => model.size_whole().map_err(|e| {
                out_of_memory_context(
                    e,
                    "the weights and gradients need a GPU with more memory; over NCCL (dist.backend) with \
                     run.precision = \"bf16\", ZeRO-1 shards the f32 weights on the GPUs too",
                )
            }),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, fresh } => {
                model.attach_optimizer(_opt, _zero1.unwrap_or(1)).map_err(|e| {
                    out_of_memory_context(e, "AdamW's moments on the device need a GPU with more memory, or dist.zero1 = true (sharded over the ranks)")
                })?;
                *fresh = false; // (a shard's padded buffers start empty)
                Ok(())
            }
        }
    }

    /// Whether clipping and AdamW run on the device ([`Compute::clip`], [`Compute::update`]).
    pub fn device_optimizer(&self) -> bool {
        match self {
            Compute::Cpu => false,
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => model.has_optimizer(),
        }
    }

    /// Over NCCL with the device optimizer, when `wanted`: sum the gradients over the ranks bucket by
    /// bucket during the backward of each step's last micro-batch (buckets of at least `bucket_bytes`;
    /// 0: a block each). Every rank of a group calls it: they agree, so that all of them or none do
    /// (a rank that fell back to the CPU under `run.device = "auto"` cannot). Returns the number of
    /// buckets (the blocks' and the rest), or none (the gradients are reduced after the backward).
    pub fn overlap_grads(&mut self, dist: &mut Dist, wanted: bool, _bucket_bytes: usize) -> Result<Option<usize>> {
        let can = wanted && self.device_optimizer() && dist.has_nccl();
        dist.tag("gradient overlap agreement");
        if dist.world == 1 || dist.any(!can)? {
            return Ok(None);
        }
        #[cfg(feature = "cuda")]
        if let Compute::Cuda { model, .. } = self {
            return Ok(Some(model.overlap_grads(_bucket_bytes)));
        }
        unreachable!("only a rank with the device optimizer can overlap")
    }

    /// Whether the device optimizer updates this rank's ZeRO-1 shard alone.
    pub fn device_zero1(&self) -> bool {
        match self {
            Compute::Cpu => false,
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => model.is_sharded(),
        }
    }

    /// When this rank's GPU keeps the f32 master weights of its ZeRO-1 shard alone (with bf16
    /// matmuls; `model::f32_reads`): the values it keeps in f32 besides, those the kernels read.
    pub fn device_master_shard(&self) -> Option<usize> {
        match self {
            Compute::Cpu => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => model.f32_reads(),
        }
    }

    /// At the start of a step: the GPU gets the current parameters (unless it holds them) and zeroed
    /// gradients.
    pub fn begin_step(&mut self, _params: &Params<f32>) -> Result<()> {
        match self {
            Compute::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, fresh } => {
                current_on_device(model, fresh, _params)?;
                model.reset_peak_memory()?;
                model.zero_grads()
            }
        }
    }

    /// The GPU's name, when the model runs on one.
    pub fn gpu_name(&self) -> Option<&str> {
        match self {
            Compute::Cpu => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => Some(model.device_name()),
        }
    }

    /// The GPU's memory (bytes), when the model runs on one.
    pub fn gpu_total_memory(&self) -> Option<u64> {
        match self {
            Compute::Cpu => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => model.device().ctx.total_mem().ok().map(|b| b as u64),
        }
    }

    /// On a GPU: the most device memory the allocator held since [`Compute::begin_step`] (bytes). None
    /// on the CPU, or where the driver does not say.
    pub fn gpu_memory_peak(&self) -> Option<u64> {
        match self {
            Compute::Cpu => None,
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => model.memory().ok().map(|m| m.peak),
        }
    }

    /// The forward and loss only (validation), with the current parameters.
    pub fn forward(
        &mut self,
        (mc, lay): (&ModelConfig, &Layout),
        params: &Params<f32>,
        inp: &ModelInput<f32>,
        acts: &mut Acts<f32>,
    ) -> Result<BitwiseCe> {
        match self {
            Compute::Cpu => {
                forward_into(mc, lay, params, inp, acts);
                Ok(acts.ce.clone())
            }
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, fresh } => {
                current_on_device(model, fresh, params)?;
                model.step(inp, false).map_err(out_of_memory_hint)
            }
        }
    }

    /// Where sample grids are drawn: the model on the GPU (given the current parameters, as for
    /// [`Compute::forward`]), or the CPU model.
    pub fn sampler<'a>(&'a mut self, params: &'a Params<f32>) -> Result<Sampler<'a>> {
        match self {
            Compute::Cpu => Ok(Sampler::Cpu(params)),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, fresh } => {
                current_on_device(model, fresh, params)?;
                Ok(Sampler::Gpu(model))
            }
        }
    }

    /// Whether bitwise self-correction runs on the device (the GPU does it for the whole micro-batch
    /// from the latents and flip keys, with the host's keyed flips).
    pub fn self_corrects(&self) -> bool {
        !matches!(self, Compute::Cpu)
    }

    /// Forward and backward of one micro-batch: gradients added into `grads` (CPU) or into the device's
    /// accumulator (GPU); returns the loss statistics. `device_bsc` (latents and flip keys, `p_max` and
    /// `apply_layers`) replaces `inp`'s inputs and labels when [`Compute::self_corrects`]. `last`, on a
    /// step's last micro-batch, is the group whose ranks the backward sums the gradients over as it goes
    /// ([`Compute::overlap_grads`]; [`Compute::clip`] then finds them summed).
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub fn micro_step(
        &mut self,
        (mc, lay): (&ModelConfig, &Layout),
        params: &Params<f32>,
        inp: &ModelInput<f32>,
        device_bsc: Option<((&[f32], &[u64]), (f64, usize))>,
        acts: &mut Acts<f32>,
        grads: &mut Params<f32>,
        _last: Option<&mut Dist>,
    ) -> Result<BitwiseCe> {
        #[cfg(feature = "cuda")]
        let grad = match (&*self, _last.and_then(|d| d.nccl())) {
            (Compute::Cuda { model, .. }, Some(comm)) if model.overlaps_grads() => {
                crate::gpu::Grad::AccumulateAndReduce(comm)
            }
            _ => crate::gpu::Grad::Accumulate,
        };
        match (self, device_bsc) {
            (Compute::Cpu, None) => {
                forward_into(mc, lay, params, inp, acts);
                backward(mc, lay, params, inp, acts, grads);
                Ok(acts.ce.clone())
            }
            (Compute::Cpu, Some(_)) => bail!("the CPU model self-corrects on the host"),
            #[cfg(feature = "cuda")]
            (Compute::Cuda { model, .. }, Some((latents, bsc))) => {
                model.step_latents(inp, latents, bsc, grad).map_err(out_of_memory_hint)
            }
            #[cfg(feature = "cuda")]
            (Compute::Cuda { model, .. }, None) => model.step(inp, grad).map_err(out_of_memory_hint),
        }
    }

    /// At the end of a step's micro-batches: the GPU's accumulated gradients into `grads`, unless the
    /// device optimizer consumes them where they are.
    pub fn end_step(&mut self, _grads: &mut Params<f32>) -> Result<()> {
        match self {
            Compute::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } if model.has_optimizer() => Ok(()),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => model.add_grads_into(&mut _grads.data),
        }
    }

    /// Device optimizer: average the gradients over ranks and clip them; returns the norm before
    /// clipping.
    pub fn clip(&mut self, _dist: &mut Dist, _max_norm: f64) -> Result<f64> {
        match self {
            Compute::Cpu => bail!("clip: the CPU path clips on the host"),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => {
                if _dist.world > 1 {
                    match (_dist.nccl(), model.is_sharded()) {
                        (Some(comm), true) => model.reduce_scatter_grads(comm)?,
                        (Some(comm), false) => model.reduce_grads_nccl(comm)?,
                        (None, false) => model.reduce_grads_on_host(|g| {
                            _dist.tag("gradients");
                            _dist.all_reduce_mean(g)
                        })?,
                        (None, true) => bail!("a ZeRO-1 shard on the device needs the NCCL communicator"),
                    }
                }
                model.clip_grads(_max_norm, |sums| {
                    _dist.tag("gradient norm");
                    _dist.all_reduce_sum(sums)
                })
            }
        }
    }

    /// Device optimizer: one AdamW step on the device (with ZeRO-1, of this rank's shard, then the
    /// parameters gathered from every rank).
    pub fn update(&mut self, _dist: &mut Dist, _opt: &mut AdamW, _lr: f64) -> Result<()> {
        match self {
            Compute::Cpu => bail!("update: the CPU path updates on the host"),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } => {
                model.adamw_step(_opt, _lr)?;
                match (model.is_sharded(), _dist.nccl()) {
                    (false, _) => Ok(()),
                    (true, Some(comm)) => model.all_gather_params(comm),
                    (true, None) => bail!("a ZeRO-1 shard on the device needs the NCCL communicator"),
                }
            }
        }
    }

    /// Keep `ema` where the parameters are updated: with the device optimizer, on the device (from
    /// `ema`'s current values). A no-op otherwise.
    pub fn attach_ema(&mut self, _ema: &Ema) -> Result<()> {
        match self {
            Compute::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } if model.has_optimizer() => model.attach_ema(&_ema.weights).map_err(|e| {
                out_of_memory_context(e, "the moving average needs a GPU with more memory, or optim.ema_decay = 0")
            }),
            #[cfg(feature = "cuda")]
            Compute::Cuda { .. } => Ok(()),
        }
    }

    /// After an update: pull the moving average towards the new parameters, where they are.
    pub fn update_ema(&mut self, ema: &mut Ema, params: &Params<f32>) -> Result<()> {
        match self {
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } if model.has_ema() => model.ema_update(ema.decay),
            _ => {
                ema.update(&params.data);
                Ok(())
            }
        }
    }

    /// Device optimizer: copy the device's parameters (with `opt`, AdamW's moments; with `ema`, the
    /// moving average) to the host, for checkpoints: on rank 0, which writes them, and under ZeRO-1 on
    /// every rank (its shards go into rank 0's). A no-op otherwise (the host copies are current, or
    /// unread: the device holds the parameters). A collective under ZeRO-1 with bf16 matmuls, where
    /// each GPU keeps its shard of the f32 parameters alone: the ranks' shards are gathered into rank
    /// 0's host copy (another rank's holds its own shard current).
    pub fn sync_host(
        &mut self,
        _dist: &mut Dist,
        _params: &mut Params<f32>,
        _opt: Option<&mut AdamW>,
        _ema: Option<&mut Ema>,
    ) -> Result<()> {
        match self {
            Compute::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Compute::Cuda { model, .. } if model.has_optimizer() => {
                if !(_dist.is_leader() || model.is_sharded()) {
                    return Ok(()); // (its host moments are released: Updater::place)
                }
                model.download_state(_params, _opt, _ema.map(|e| &mut e.weights[..]))?;
                if model.shards_masters() {
                    let (numel, mine) =
                        (_params.data.len(), super::zero1::shard_range(_params.data.len(), _dist.rank, _dist.world));
                    if let Some(whole) = super::zero1::gather_shards(_dist, &_params.data[mine], numel)? {
                        _params.data = whole;
                    }
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Compute::Cuda { .. } => Ok(()),
        }
    }
}

/// The GPU given the current parameters: without the device optimizer the host updated them after
/// this step's upload; with it, the device holds them once uploaded.
#[cfg(feature = "cuda")]
fn current_on_device(model: &mut crate::gpu::GpuModel, fresh: &mut bool, params: &Params<f32>) -> Result<()> {
    if !model.has_optimizer() || !*fresh {
        model.upload_params(params)?;
        *fresh = model.has_optimizer();
    }
    Ok(())
}

/// The GPU this process would use, if any ([`device_ordinal`] of its local rank, as the group reads it).
fn gpu_ordinal() -> Result<Option<usize>> {
    #[cfg(feature = "cuda")]
    {
        if !crate::gpu::cuda_available() {
            return Ok(None);
        }
        let count = cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize;
        // (a malformed rank description is the group's to name, when it forms)
        let env = infinity_launcher::env::DistEnv::from_lookup(|k| std::env::var(k).ok()).ok().flatten();
        device_ordinal(env.map_or(0, |e| e.local_rank), count).map_err(super::unrecoverable)
    }
    #[cfg(not(feature = "cuda"))]
    Ok(None)
}

/// The GPU of the rank with local rank `local` where `count` devices are visible: the only one (our agent
/// sets `CUDA_VISIBLE_DEVICES` per rank), else device `local` (torchrun's `LOCAL_RANK`, `SLURM_LOCALID`
/// under srun); none where none is visible. The model and the NCCL communicator both open this one.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn device_ordinal(local: usize, count: usize) -> Result<Option<usize>> {
    match count {
        0 => Ok(None),
        1 => Ok(Some(0)),
        n if local < n => Ok(Some(local)),
        n => anyhow::bail!(
            "local rank {local} (LOCAL_RANK, SLURM_LOCALID under srun, else RANK) but only {n} CUDA devices are \
             visible"
        ),
    }
}

/// `e` from a step, with what to change when the GPU ran out of memory.
#[cfg(feature = "cuda")]
fn out_of_memory_hint(e: anyhow::Error) -> anyhow::Error {
    out_of_memory_context(
        e,
        "a smaller data.micro_batch needs less (gradient accumulation keeps data.global_batch), and so does \
         run.recompute = true (each block's activations recomputed in the backward)",
    )
}

/// `e`, saying the GPU ran out of memory and `advice`, when it did (the error itself says how much was
/// in use when the allocation failed).
#[cfg(feature = "cuda")]
fn out_of_memory_context(e: anyhow::Error, advice: &str) -> anyhow::Error {
    if !e.chain().any(infinity_kernels::cuda::device::out_of_memory) {
        return e;
    }
    e.context(format!("the GPU ran out of memory: {advice}"))
}

/// Whether `e` says the GPU itself cannot run the run (too old for NVRTC, no bf16 tensor cores), rather
/// than that something failed.
#[cfg(feature = "cuda")]
fn gpu_unsupported(e: &anyhow::Error) -> bool {
    use infinity_kernels::cuda::{compile::CompileError, CudaError};
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<CudaError>(),
            Some(CudaError::Unsupported(_) | CudaError::Compile(CompileError::GpuTooOld { .. }))
        )
    })
}

fn why_no_gpu() -> &'static str {
    if cfg!(feature = "cuda") {
        "no CUDA driver or device was found"
    } else {
        "this build has no CUDA support (build with --features cuda)"
    }
}

#[cfg(test)]
mod tests {
    use super::device_ordinal;

    #[test]
    fn a_rank_opens_the_only_visible_gpu_or_its_local_ranks() {
        assert_eq!(device_ordinal(3, 0).unwrap(), None);
        assert_eq!(device_ordinal(3, 1).unwrap(), Some(0)); // (CUDA_VISIBLE_DEVICES set per rank)
        assert_eq!(device_ordinal(3, 8).unwrap(), Some(3));
        let e = device_ordinal(9, 8).unwrap_err().to_string();
        assert!(e.contains("local rank 9") && e.contains("only 8 CUDA devices"), "{e}");
    }
}
