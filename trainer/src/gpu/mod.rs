//! The model on an NVIDIA GPU (feature `cuda`): forward and backward on the device through the CUDA
//! twins, parameters and gradients in flat device buffers with the host's layout.
//!
//! The training loop keeps its shape: per micro-batch the host gathers the latents, flip keys and
//! conditions (condition dropout included) as for the CPU model; [`GpuModel::step_latents`] runs
//! self-correction, forward and backward on the device and accumulates gradients there. Clipping and
//! AdamW run on the device too (`optim.rs`) and the parameters stay there, coming back only for
//! checkpoints, grids and validation. Data-parallel averaging runs through NCCL on the device when the
//! group has an NCCL communicator, bucket by bucket during the last micro-batch's backward
//! (`model::buckets`; with ZeRO-1 each GPU's shard is then updated and the parameters all-gathered),
//! otherwise through the host communicator; ZeRO-1 through the host communicator brings
//! the gradients to the host once per step and the sharded host optimizer runs as on the CPU.

// first: it defines `net_of!`, and a macro is in scope only after its definition
#[macro_use]
mod net;
pub mod backward;
pub mod forward;
mod master_shard;
pub mod optim;
pub mod sample;

use std::collections::HashMap;

use anyhow::{Context, Result};
use cudarc::driver::CudaSlice;
use infinity_kernels::attention::{block_causal_segments, cross_segments};
use infinity_kernels::bitwise_ce::BitwiseCe;
use infinity_kernels::cuda::attention::AttnRanges;
use infinity_kernels::cuda::bsq::{self_correct_batch, unshuffle_tokens, BsqBatch, BsqScratch};
use infinity_kernels::cuda::device::device_present;
use infinity_kernels::cuda::layers::DeviceRope;
use infinity_kernels::cuda::linear::{to_bf16_dev, Gemm};
use infinity_kernels::cuda::memory::{self, PoolUsage};
use infinity_kernels::cuda::{CudaError, Device};
use infinity_kernels::patchify;
use infinity_kernels::rope::RopeTable;

use crate::model::buckets::GradBuckets;
use crate::model::forward::scale_index;
use crate::model::{Condition, Layout, ModelConfig, ModelInput, Params};
use forward::{DeviceCondition, DeviceInput};
use infinity_launcher::comm::NcclComm;
use optim::reduce_part;

pub use net::Net;

/// The model's parameters and accumulated gradients on one GPU.
pub struct GpuModel {
    dev: Device,
    gemm: Gemm,
    /// f32 GEMMs for the fp32 islands when `gemm` takes bf16.
    gemm32: Option<Gemm>,
    cfg: ModelConfig,
    lay: Layout,
    /// The f32 master weights: all of them (`[numel]`, or padded to `world` equal parts under ZeRO-1
    /// with f32 matmuls), or with bf16 matmuls under ZeRO-1 this rank's shard alone (`[part]`; the
    /// kernels' f32 reads then come from `reads`).
    params: CudaSlice<f32>,
    /// ZeRO-1 with bf16 matmuls: the f32 values the kernels read, every rank's (`master_shard`).
    reads: Option<master_shard::DeviceReads>,
    /// bf16 matmuls: the parameters rounded to bf16 once per change (rather than at every GEMM), and
    /// whether `params` changed since (set by every write to `params`).
    params16: Option<CudaSlice<u16>>,
    params16_stale: bool,
    /// The gradients: `[numel]` (padded with `params` under ZeRO-1), in `params`' layout; `[1]` where
    /// the model only samples.
    grads: CudaSlice<f32>,
    /// The factor `grads` still needs before the update: `1/world` after an NCCL sum, times the
    /// clipping coefficient. The device AdamW applies it as it reads them (no pass per factor); 1
    /// otherwise.
    grad_scale: f64,
    /// RoPE tables on the device by schedule, with the host table they were made from (two templates
    /// can share a schedule but not a frame).
    ropes: HashMap<Vec<(usize, usize)>, (RopeTable, DeviceRope)>,
    /// Keep only each block's input in the forward and recompute the block in the backward.
    pub recompute: bool,
    /// AdamW's state, when the optimizer runs on the device.
    optim: Option<optim::DeviceAdamW>,
    /// The buckets the backward sums over the ranks as it goes ([`Grad::AccumulateAndReduce`]), and
    /// whether this step's gradients were (until [`GpuModel::zero_grads`]).
    buckets: Option<GradBuckets>,
    grads_reduced: bool,
    /// Whether `grads` holds the gradients ([`GpuModel::new`]); false for [`GpuModel::for_sampling`].
    trains: bool,
    /// Whether the buffers above have their sizes ([`GpuModel::new_deferred`] defers them).
    sized: bool,
}

/// What a step does besides the forward and loss.
pub enum Grad<'c> {
    No,
    /// Backward, gradients added into the accumulated ones.
    Accumulate,
    /// Backward, and each bucket of the accumulated gradients summed over the ranks of the
    /// communicator as soon as it is complete (the step's last micro-batch; [`GpuModel::overlap_grads`]).
    AccumulateAndReduce(&'c mut NcclComm),
}

impl From<bool> for Grad<'_> {
    fn from(grad: bool) -> Self {
        if grad {
            Grad::Accumulate
        } else {
            Grad::No
        }
    }
}

impl GpuModel {
    /// Open device `ordinal` and allocate the parameters and gradients (zero until uploaded). `bf16`:
    /// the matmuls take bf16 inputs (f32 accumulation and outputs; f32 master weights and activations).
    pub fn new(cfg: &ModelConfig, lay: &Layout, ordinal: usize, bf16: bool) -> Result<GpuModel> {
        GpuModel::open(cfg, lay, ordinal, bf16, true, true)
    }

    /// [`GpuModel::new`] whose buffers wait for [`GpuModel::attach_optimizer`] (a ZeRO-1 shard's: with
    /// bf16 matmuls, an 8B model's whole f32 weights and gradients would not leave room on an 80 GB GPU
    /// even for a moment) or the first [`GpuModel::upload_params`] (the whole model's).
    pub fn new_deferred(cfg: &ModelConfig, lay: &Layout, ordinal: usize, bf16: bool) -> Result<GpuModel> {
        GpuModel::open(cfg, lay, ordinal, bf16, true, false)
    }

    /// [`GpuModel::new`] for sampling and forward passes only: no gradient buffers (an 8B model's
    /// 32 GB of f32 gradients would not leave its parameters room on an 80 GB GPU).
    pub fn for_sampling(cfg: &ModelConfig, lay: &Layout, ordinal: usize, bf16: bool) -> Result<GpuModel> {
        GpuModel::open(cfg, lay, ordinal, bf16, false, true)
    }

    /// `sized`: allocate the whole model's buffers now (else [`GpuModel::size_whole`] or a shard's
    /// optimizer does, later).
    fn open(
        cfg: &ModelConfig,
        lay: &Layout,
        ordinal: usize,
        bf16: bool,
        trains: bool,
        sized: bool,
    ) -> Result<GpuModel> {
        use infinity_kernels::cuda::{attention::MAX_HEAD_DIM, head_ce::MAX_BITS};
        let pool_dim = if cfg.has_cross_attention() { cfg.embed_dim / cfg.pool_heads() } else { 0 };
        anyhow::ensure!(
            cfg.head_dim() <= MAX_HEAD_DIM && pool_dim <= MAX_HEAD_DIM && cfg.d <= MAX_BITS,
            "the GPU kernels support head dims up to {MAX_HEAD_DIM} and d up to {MAX_BITS}; this model has \
             head dim {}, attention-pool head dim {pool_dim}, d = {}",
            cfg.head_dim(),
            cfg.d
        );
        let dev = Device::open(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))?;
        let gemm = Gemm::new(&dev, bf16).with_context(|| match bf16 {
            true => "bf16 matmuls (run.precision = \"bf16\"; \"f32\" does without them)",
            false => "cuBLAS",
        })?;
        let gemm32 = if bf16 { Some(Gemm::new(&dev, false).context("cuBLAS")?) } else { None };
        // (sized below; CudaError: an out-of-memory error says then how much was in use)
        let params = dev.stream.alloc_zeros::<f32>(1).map_err(CudaError::from)?;
        let params16 = if bf16 { Some(dev.stream.alloc_zeros::<u16>(1).map_err(CudaError::from)?) } else { None };
        let grads = dev.stream.alloc_zeros::<f32>(1).map_err(CudaError::from)?;
        let mut model = GpuModel {
            dev,
            gemm,
            gemm32,
            cfg: cfg.clone(),
            lay: lay.clone(),
            params,
            reads: None,
            params16,
            params16_stale: true,
            grad_scale: 1.0,
            grads,
            ropes: HashMap::new(),
            recompute: false,
            optim: None,
            buckets: None,
            grads_reduced: false,
            trains,
            sized: false,
        };
        if sized {
            model.size_whole()?;
        }
        Ok(model)
    }

    /// The whole model's parameter and gradient buffers, unless they (or a ZeRO-1 shard's) exist.
    pub fn size_whole(&mut self) -> Result<()> {
        if !self.sized {
            let (s, n) = (&self.dev.stream, self.lay.numel);
            self.params = s.alloc_zeros(n).map_err(CudaError::from)?;
            if let Some(p16) = self.params16.as_mut() {
                *p16 = s.alloc_zeros(n).map_err(CudaError::from)?;
            }
            self.grads = s.alloc_zeros(if self.trains { n } else { 1 }).map_err(CudaError::from)?;
            self.sized = true;
        }
        Ok(())
    }

    /// The device (its stream, kernels and profiler).
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The device's architecture (`compute_XY`).
    pub fn arch(&self) -> &str {
        self.dev.arch
    }

    /// The driver's name for the device.
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// The device memory the allocator's pool holds now and its high-water mark since
    /// [`GpuModel::reset_peak_memory`].
    pub fn memory(&self) -> Result<PoolUsage> {
        Ok(memory::pool_usage(&self.dev)?)
    }

    /// Start the high-water mark of [`GpuModel::memory`] again from the bytes in use now.
    pub fn reset_peak_memory(&self) -> Result<()> {
        Ok(memory::reset_peak(&self.dev)?)
    }

    pub fn upload_params(&mut self, p: &Params<f32>) -> Result<()> {
        let s = &self.dev.stream;
        match (&mut self.reads, &mut self.params16, &self.optim) {
            // ZeRO-1 with bf16 matmuls: the shard's masters, the f32 reads and every bf16 weight
            (Some(reads), Some(p16), Some(o)) => {
                s.memcpy_htod(&p.data[o.range.clone()], &mut self.params.slice_mut(0..o.range.len()))?;
                reads.upload(&self.dev, &self.lay, &p.data)?;
                master_shard::upload_bf16(&self.dev, &p.data, p16)?;
                self.params16_stale = false;
            }
            _ => {
                self.size_whole()?;
                self.dev.stream.memcpy_htod(&p.data, &mut self.params)?;
                self.params16_stale = true;
            }
        }
        Ok(())
    }

    pub fn zero_grads(&mut self) -> Result<()> {
        self.dev.stream.memset_zeros(&mut self.grads)?;
        self.grad_scale = 1.0; // a skipped update leaves no factor behind
        self.grads_reduced = false;
        Ok(())
    }

    /// Add the accumulated device gradients into `host` (same layout).
    pub fn add_grads_into(&mut self, host: &mut [f32]) -> Result<()> {
        anyhow::ensure!(self.sized, "the model holds no gradients before its optimizer or first upload");
        anyhow::ensure!(
            self.grad_scale == 1.0 && !self.grads_reduced,
            "the host optimizer takes the gradients as they are, not clipped or reduced on the device"
        );
        let g = self.dev.stream.clone_dtoh(&self.grads.slice(0..self.lay.numel))?;
        host.iter_mut().zip(&g).for_each(|(h, d)| *h += d);
        Ok(())
    }

    /// Forward (and with `grad`, backward into the accumulated gradients) of one micro-batch.
    /// Returns the loss statistics the CPU model's `acts.ce` holds.
    pub fn step<'c>(&mut self, inp: &ModelInput<f32>, grad: impl Into<Grad<'c>>) -> Result<BitwiseCe> {
        let s = &self.dev.stream;
        let bits = (s.clone_htod(inp.x_wo_prefix)?, s.clone_htod(inp.gt_bits)?);
        let dinp = self.upload_input(inp, bits)?;
        self.run(inp, dinp, grad.into())
    }

    /// [`GpuModel::step`] with bitwise self-correction on the device: `latents [B, d, H, W]` and one flip
    /// key per sample replace `inp`'s teacher-forcing inputs and labels (which are ignored), computed
    /// by bsq.cu with the same keyed flips as `bsq::keyed_flips` on the host. With spatial patchify the
    /// latents are the tokenizer's `[B, d/4, 2H, 2W]`, self-corrected on the doubled schedule and
    /// unshuffled into tokens.
    pub fn step_latents<'c>(
        &mut self,
        inp: &ModelInput<f32>,
        (latents, keys): (&[f32], &[u64]),
        (p_max, apply_layers): (f64, usize),
        grad: impl Into<Grad<'c>>,
    ) -> Result<BitwiseCe> {
        let (b, d, patchify) = (inp.b, self.cfg.d_vae(), self.cfg.apply_spatial_patchify);
        // the teacher-forcing inputs are [B, L − 1, d]: the schedule starts with one token
        anyhow::ensure!(
            inp.scales.first() == Some(&(1, 1)),
            "schedules start with a 1×1 scale, found {}",
            inp.scales.first().map_or("none".into(), |s| format!("{s:?}"))
        );
        let scales = if patchify { patchify::tokenizer_scales(inp.scales) } else { inp.scales.to_vec() };
        let &(hh, ww) = scales.last().context("empty schedule")?;
        anyhow::ensure!(latents.len() == b * d * hh * ww && keys.len() == b, "latents are not [B, d, H, W]");
        let s = &self.dev.stream;
        let bits = {
            let (lat, k) = (s.clone_htod(latents)?, s.clone_htod(keys)?);
            let mut out = BsqBatch::new(&self.dev, b, d, &scales)?;
            let mut scratch = BsqScratch::new(b, d, (hh, ww));
            self_correct_batch(&self.dev, &lat, &k, b, d, &scales, p_max, apply_layers, &mut out, &mut scratch)?;
            match patchify {
                false => (out.x_wo_prefix, out.gt_bits),
                true => {
                    let (mut x, mut gt) = (s.alloc_zeros(out.x_wo_prefix.len())?, s.alloc_zeros(out.gt_bits.len())?);
                    unshuffle_tokens(&self.dev, &out.x_wo_prefix, &mut x, (b, d), inp.scales, 1)?;
                    unshuffle_tokens(&self.dev, &out.gt_bits, &mut gt, (b, d), inp.scales, 0)?;
                    (x, gt)
                }
            }
        };
        let dinp = self.upload_input(inp, bits)?;
        self.run(inp, dinp, grad.into())
    }

    fn run(&mut self, inp: &ModelInput<f32>, dinp: DeviceInput, grad: Grad) -> Result<BitwiseCe> {
        anyhow::ensure!(self.sized, "the model's buffers come with its optimizer or first upload (new_deferred)");
        anyhow::ensure!(
            self.trains || matches!(grad, Grad::No),
            "a model opened for sampling has no gradient buffers (GpuModel::new trains)"
        );
        let key = inp.scales.to_vec();
        if self.ropes.get(&key).is_none_or(|(host, _)| host != inp.rope) {
            let table = DeviceRope::new(&self.dev, inp.rope)?;
            self.ropes.insert(key.clone(), (inp.rope.clone(), table));
        }
        self.refresh_bf16()?;
        let rope = &self.ropes[&key].1;
        // (field by field, so the backward can still write `self.grads`)
        let net = net_of!(self);
        let acts = forward::forward(&net, &dinp, rope, !matches!(grad, Grad::No), self.recompute)?;
        match grad {
            Grad::No => {}
            Grad::Accumulate => backward::backward(&net, &dinp, &acts, rope, &mut self.grads, &mut |_, _| Ok(()))?,
            Grad::AccumulateAndReduce(comm) => {
                // each bucket summed over the ranks as soon as the backward has written it
                // (with ZeRO-1, each shard's piece to its owner)
                let shard = self.shard_part();
                let plan = self.buckets.as_ref().context("the model reduces no gradients in the backward")?;
                let stream = &self.dev.stream;
                let mut block_done = |blk, grads: &mut CudaSlice<f32>| -> Result<()> {
                    match plan.after_block(blk) {
                        Some(range) => reduce_part(grads, range, shard, comm, stream),
                        None => Ok(()),
                    }
                };
                backward::backward(&net, &dinp, &acts, rope, &mut self.grads, &mut block_done)?;
                for range in plan.rest() {
                    reduce_part(&mut self.grads, range, shard, comm, stream)?;
                }
                self.grads_reduced = true;
            }
        }
        let s = &self.dev.stream;
        let token_loss: Vec<f64> = s.clone_dtoh(&acts.ce.token_loss)?.into_iter().map(f64::from).collect();
        let correct_bits = s.clone_dtoh(&acts.ce.correct)?;
        drop(acts);
        self.dev.check_deferred_errors("the step")?;
        let loss = token_loss.iter().zip(inp.token_weights).map(|(l, w)| l * w).sum();
        Ok(BitwiseCe { loss, token_loss, correct_bits })
    }

    /// The bf16 copy of the parameters made current, if the matmuls take bf16.
    fn refresh_bf16(&mut self) -> Result<()> {
        anyhow::ensure!(
            !(self.params16_stale && self.reads.is_some()),
            "the bf16 weights of a ZeRO-1 rank are made by the update and its gather (all_gather_params)"
        );
        if let (Some(p16), true) = (&mut self.params16, self.params16_stale) {
            to_bf16_dev(&self.dev, &self.params.slice(0..self.lay.numel), p16)?;
            self.params16_stale = false;
        }
        Ok(())
    }

    /// What the kernels need (after [`GpuModel::refresh_bf16`]).
    fn net(&self) -> Net<'_> {
        net_of!(self)
    }

    /// The batch on the device, with its teacher-forcing inputs and labels already there.
    fn upload_input(&self, inp: &ModelInput<f32>, (x, gt): (CudaSlice<f32>, CudaSlice<u8>)) -> Result<DeviceInput> {
        let (s, b) = (&self.dev.stream, inp.b);
        let l: usize = inp.scales.iter().map(|&(h, w)| h * w).sum();
        let tokens: Vec<usize> = inp.scales.iter().map(|&(h, w)| h * w).collect();
        let idx: Vec<i32> = scale_index(b, inp.scales).into_iter().map(|v| v as i32).collect();
        let weights: Vec<f32> = inp.token_weights.iter().map(|&w| w as f32).collect();
        let sa = AttnRanges::new(&self.dev, &block_causal_segments(b, &tokens), b * l, b * l)?;
        let cond = device_condition(&self.dev, &inp.cond, b, l)?;
        Ok(DeviceInput {
            b,
            l,
            x_wo_prefix: x,
            gt_bits: gt,
            weights: s.clone_htod(&weights)?,
            scale_idx: s.clone_htod(&idx)?,
            label_smoothing: inp.label_smoothing as f32,
            cond,
            sa,
            drop_path: match inp.drop_path.is_empty() {
                true => None,
                false => Some(s.clone_htod(inp.drop_path)?),
            },
        })
    }
}

/// The condition of `b` rows of `l` tokens on the device.
fn device_condition(dev: &Device, cond: &Condition<f32>, b: usize, l: usize) -> Result<DeviceCondition> {
    let s = &dev.stream;
    Ok(match *cond {
        Condition::Class { labels } => {
            let labels: Vec<i32> = labels.iter().map(|&v| v as i32).collect();
            DeviceCondition::Class { labels: s.clone_htod(&labels)? }
        }
        Condition::Text { kv_compact, cu_seqlens, dropped } => {
            let nt = cu_seqlens[b];
            let (ca, pool) = (cross_segments(l, &cu_seqlens[..=b]), cross_segments(1, &cu_seqlens[..=b]));
            DeviceCondition::Text {
                kv_compact: s.clone_htod(kv_compact)?,
                cu: cu_seqlens.to_vec(),
                dropped: dropped.to_vec(),
                ca: Box::new(AttnRanges::new(dev, &ca, b * l, nt)?),
                pool: Box::new(AttnRanges::new(dev, &pool, b, nt)?),
            }
        }
    })
}

/// Whether a CUDA device can be used (driver and device present; never panics).
pub fn cuda_available() -> bool {
    device_present()
}
