//! AdamW and global-norm clipping on the device (adamw.cu), the twins of `optim::AdamW::update` and
//! `optim::clip_grad_norm`: with them the parameters and moments stay on the GPU between steps and come
//! back only for checkpoints, sample grids and validation.
//!
//! With ZeRO-1 over NCCL each rank's device holds the moments of its shard of the flat parameters
//! only: the gradients are reduce-scattered (or were reduced to their shards' owners bucket by bucket
//! during the backward), the rank updates its shard, and the parameters are all-gathered in place, as
//! `train::zero1::Zero1` does on the host.
//!
//! NCCL runs on the communicator's own stream: every collective on the model's buffers starts after
//! the work queued on the model's stream (`NcclComm::after`), and the model's stream goes on after it
//! (`NcclComm::before`, besides the host's wait that lets the watchdog judge a stall).

use std::ops::Range;

use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use infinity_kernels::adamw::AdamWScalars;
use infinity_kernels::cuda::ops::{adamw_dev, ema_dev, sum_squares_dev, DeviceGroupRuns};
use infinity_launcher::comm::{Communicator, NcclComm};

use super::master_shard::DeviceReads;
use super::GpuModel;
use crate::model::buckets::GradBuckets;
use crate::model::Params;
use crate::optim::AdamW;

/// The moments and the parameters' optimizer groups on the device (of the parameters in `range`: all
/// of them, or this rank's ZeRO-1 shard), and the weights' moving average of the same range when the
/// run keeps one here.
pub struct DeviceAdamW {
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    /// The group bytes of `range`, as runs, and the learning-rate multipliers they index
    /// (`optim::param_groups`).
    groups: DeviceGroupRuns,
    lr_mult: CudaSlice<f64>,
    ema: Option<CudaSlice<f32>>,
    pub(super) range: Range<usize>,
    /// ZeRO-1: `[numel / world, rounded up]` this rank's part of the reduce-scattered gradients (the
    /// values past `range` are the flat buffers' padding).
    shard_grads: Option<CudaSlice<f32>>,
}

impl GpuModel {
    /// Move AdamW's state onto the device: a whole one (`world` = 1), or (ZeRO-1, `world` > 1) this
    /// rank's shard, `opt.range` being `train::zero1::shard_range` of the rank, which must not be empty.
    /// With a shard, the flat gradients and the parameters the matmuls read (bf16 or f32) are padded
    /// to `world` equal parts (NCCL moves equal parts), with bf16 matmuls the f32 masters are the
    /// shard's alone (`master_shard`), and all lose their values: upload the parameters after this.
    pub fn attach_optimizer(&mut self, opt: &AdamW, world: usize) -> Result<()> {
        anyhow::ensure!(self.trains, "a model opened for sampling takes no optimizer");
        let numel = self.lay.numel;
        let part = numel.div_ceil(world);
        let sharded = world > 1;
        let fits = match sharded {
            true => !opt.range.is_empty() && opt.range.start.is_multiple_of(part) && opt.range.len() <= part,
            false => opt.range == (0..numel),
        };
        ensure!(fits, "AdamW's state covers parameters {:?}: not a shard of {numel} over {world} ranks", opt.range);
        let s = self.dev.stream.clone();
        let shard_grads = match sharded {
            true => {
                // (the old buffers go before the new ones come: no moment holds both)
                self.grads = s.alloc_zeros(1)?;
                self.params = s.alloc_zeros(1)?;
                self.grads = s.alloc_zeros(part * world)?;
                match self.params16.as_mut() {
                    Some(p16) => {
                        *p16 = s.alloc_zeros(1)?;
                        *p16 = s.alloc_zeros(part * world)?;
                        self.params = s.alloc_zeros(part)?;
                        let rank = opt.range.start / part;
                        self.reads = Some(DeviceReads::new(&self.dev, &self.lay, rank, world)?);
                    }
                    None => self.params = s.alloc_zeros(part * world)?,
                }
                self.params16_stale = true;
                self.sized = true;
                Some(s.alloc_zeros(part)?)
            }
            false => {
                self.size_whole()?;
                None
            }
        };
        let (m, v) = (s.clone_htod(&opt.m)?, s.clone_htod(&opt.v)?);
        let (groups, lr_mult) = (DeviceGroupRuns::upload(&self.dev, opt.groups())?, s.clone_htod(opt.lr_mult())?);
        let range = opt.range.clone();
        self.optim = Some(DeviceAdamW { m, v, groups, lr_mult, ema: None, range, shard_grads });
        Ok(())
    }

    /// Whether the device optimizer updates a ZeRO-1 shard ([`GpuModel::reduce_scatter_grads`],
    /// [`GpuModel::all_gather_params`]).
    pub fn is_sharded(&self) -> bool {
        self.shard_part().is_some()
    }

    /// ZeRO-1: the values each rank's shard spans (the last one's padded).
    pub(super) fn shard_part(&self) -> Option<usize> {
        self.optim.as_ref().and_then(|o| o.shard_grads.as_ref()).map(|g| g.len())
    }

    /// A fresh AdamW state (zero moments, made on the device; the layout's optimizer groups): what a
    /// benchmark times the update with, without a host copy of the moments.
    pub fn attach_fresh_optimizer(&mut self) -> Result<()> {
        self.size_whole()?;
        let s = &self.dev.stream;
        let (groups, lr_mult) = crate::optim::param_groups(&self.lay);
        let (m, v) = (s.alloc_zeros(self.lay.numel)?, s.alloc_zeros(self.lay.numel)?);
        let (groups, lr_mult) = (DeviceGroupRuns::upload(&self.dev, &groups)?, s.clone_htod(&lr_mult)?);
        let range = 0..self.lay.numel;
        self.optim = Some(DeviceAdamW { m, v, groups, lr_mult, ema: None, range, shard_grads: None });
        Ok(())
    }

    pub fn has_optimizer(&self) -> bool {
        self.optim.is_some()
    }

    /// Replace the device gradients by `reduce` of them on the host (data-parallel averaging through a
    /// host communicator).
    pub fn reduce_grads_on_host(&mut self, reduce: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
        ensure!(self.grad_scale == 1.0, "reduce the gradients before clipping them");
        let s = &self.dev.stream;
        let mut g = s.clone_dtoh(&self.grads)?;
        reduce(&mut g)?;
        s.memcpy_htod(&g, &mut self.grads)?;
        Ok(())
    }

    /// From now on, the backward of a step's last micro-batch sums the gradients over the ranks bucket
    /// by bucket (`Grad::AccumulateAndReduce`), each bucket of at least `bucket_bytes` (0: a block).
    /// Returns the number of buckets (the blocks' and the rest).
    pub fn overlap_grads(&mut self, bucket_bytes: usize) -> usize {
        let plan = GradBuckets::new(&self.lay, self.cfg.depth, bucket_bytes);
        let n = plan.ranges().count();
        self.buckets = Some(plan);
        n
    }

    /// Whether the backward can sum the gradients over the ranks ([`GpuModel::overlap_grads`]).
    pub fn overlaps_grads(&self) -> bool {
        self.buckets.is_some()
    }

    /// Average the device gradients over the ranks of `comm`: an NCCL all-reduce sums them in place
    /// (unless the backward did, bucket by bucket), and the `1/world` is left to the update
    /// (`grad_scale`), which reads them anyway.
    pub fn reduce_grads_nccl(&mut self, comm: &mut NcclComm) -> Result<()> {
        ensure!(self.grad_scale == 1.0, "reduce the gradients before clipping them");
        if !self.grads_reduced {
            comm.after(&self.dev.stream)?;
            tag(comm, "gradients");
            comm.all_reduce_sum_device(&mut self.grads)?;
        }
        collectives_done(comm, &self.dev.stream, "all_reduce")?;
        self.grad_scale = 1.0 / comm.world() as f64;
        Ok(())
    }

    /// ZeRO-1: sum the device gradients over the ranks of `comm`, each rank keeping its shard's part
    /// (a reduce-scatter, or what the backward's bucket reduces summed into this rank's shard); the
    /// `1/world` is left to the update (`grad_scale`), as in [`GpuModel::reduce_grads_nccl`].
    pub fn reduce_scatter_grads(&mut self, comm: &mut NcclComm) -> Result<()> {
        ensure!(self.grad_scale == 1.0, "reduce the gradients before clipping them");
        let o = self.optim.as_mut().expect("a sharded optimizer");
        let shard = o.shard_grads.as_mut().expect("a sharded optimizer");
        if self.grads_reduced {
            collectives_done(comm, &self.dev.stream, "reduce")?;
            let part = self.grads.slice(o.range.clone());
            self.dev.stream.memcpy_dtod(&part, &mut shard.slice_mut(0..o.range.len()))?;
        } else {
            comm.after(&self.dev.stream)?;
            tag(comm, "gradients (ZeRO-1 shards)");
            comm.reduce_scatter_sum_device(&self.grads, shard)?;
            collectives_done(comm, &self.dev.stream, "reduce_scatter")?;
        }
        self.grad_scale = 1.0 / comm.world() as f64;
        Ok(())
    }

    /// Clip the gradients' global norm to at most `max_norm`; returns the norm before (the CPU's
    /// arithmetic: f64 sum of squares, `optim::clip_coef`). Of the gradients as
    /// the update will see them (times `grad_scale`), and the coefficient joins `grad_scale`: no pass
    /// over the gradients but the sum of squares. With a ZeRO-1 shard, `sum` adds the ranks' sums of
    /// squares of their shards (as the host's ZeRO-1, in f32).
    pub fn clip_grads(&mut self, max_norm: f64, sum: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<f64> {
        let shard = self.optim.as_ref().and_then(|o| Some((o.shard_grads.as_ref()?, o.range.len())));
        let sum_sq = match shard {
            Some((shard, len)) => {
                let mut total = [sum_squares_dev(&self.dev, &shard.slice(0..len))? as f32];
                sum(&mut total)?;
                total[0] as f64
            }
            None => sum_squares_dev(&self.dev, &self.grads)?,
        };
        let norm = sum_sq.sqrt() * self.grad_scale;
        if let Some(coef) = crate::optim::clip_coef(norm, max_norm) {
            self.grad_scale *= coef;
        }
        Ok(norm)
    }

    /// One AdamW step on the device (`opt` counts the step and supplies the scalars).
    pub fn adamw_step(&mut self, opt: &mut AdamW, lr: f64) -> Result<()> {
        self.adamw_update(opt.next_step_scalars(lr))
    }

    /// One AdamW update on the device with this step's `scalars` (the gradients' pending scale joins
    /// them).
    pub fn adamw_update(&mut self, scalars: AdamWScalars) -> Result<()> {
        let o = self.optim.as_mut().expect("attach_optimizer first");
        let scalars = scalars.with_grad_scale(self.grad_scale);
        match o.shard_grads.as_ref() {
            // ZeRO-1 with bf16 matmuls: the shard's masters and its part of the bf16 copy (the rest
            // comes with the gather)
            Some(shard) if self.reads.is_some() => {
                let (mut p, g) = (self.params.slice_mut(0..o.range.len()), shard.slice(0..o.range.len()));
                let mut p16 = self.params16.as_mut().expect("bf16 matmuls").slice_mut(o.range.clone());
                adamw_dev(&self.dev, &mut p, Some(&mut p16), &g, &mut o.m, &mut o.v, &o.groups, &o.lr_mult, &scalars)?;
                self.params16_stale = true;
            }
            // ZeRO-1 with f32 matmuls: this rank's shard
            Some(shard) => {
                let (mut p, g) = (self.params.slice_mut(o.range.clone()), shard.slice(0..o.range.len()));
                let no_bf16 = None::<&mut CudaSlice<u16>>;
                adamw_dev(&self.dev, &mut p, no_bf16, &g, &mut o.m, &mut o.v, &o.groups, &o.lr_mult, &scalars)?;
            }
            // the bf16 GEMMs' copy of the weights is written by the same pass
            None => {
                let (p, p16) = (&mut self.params, self.params16.as_mut());
                adamw_dev(&self.dev, p, p16, &self.grads, &mut o.m, &mut o.v, &o.groups, &o.lr_mult, &scalars)?;
                self.params16_stale = false;
            }
        }
        self.grad_scale = 1.0;
        self.dev.check_deferred_errors("the AdamW update")?;
        Ok(())
    }

    /// ZeRO-1, after the update: every rank's shard of the parameters to every rank, in place (with
    /// bf16 matmuls, the bf16 weights and then the f32 values the kernels read).
    pub fn all_gather_params(&mut self, comm: &mut NcclComm) -> Result<()> {
        comm.after(&self.dev.stream)?;
        let Some(reads) = self.reads.as_mut() else {
            tag(comm, "parameters (ZeRO-1 shards)");
            comm.all_gather_in_place_device(&mut self.params)?;
            return collectives_done(comm, &self.dev.stream, "all_gather");
        };
        tag(comm, "bf16 parameters (ZeRO-1 shards, bytes)");
        comm.all_gather_in_place_bytes(self.params16.as_mut().expect("bf16 matmuls"))?;
        reads.share(&self.dev, &self.params, comm)?;
        collectives_done(comm, &self.dev.stream, "all_gather")?;
        self.params16_stale = false;
        Ok(())
    }

    /// Whether this rank's device keeps the f32 masters of its ZeRO-1 shard alone (bf16 matmuls):
    /// [`GpuModel::download_state`] then brings back that shard's parameters only.
    pub fn shards_masters(&self) -> bool {
        self.reads.is_some()
    }

    /// With [`GpuModel::shards_masters`]: the values kept in f32 besides the shard (those the kernels
    /// read in f32, every rank's).
    pub fn f32_reads(&self) -> Option<usize> {
        self.reads.as_ref().map(DeviceReads::numel)
    }

    /// Keep the weights' moving average on the device from now on, starting from `ema` (after
    /// [`GpuModel::attach_optimizer`]), which covers the optimizer's parameters (all of them, or the
    /// rank's ZeRO-1 shard).
    pub fn attach_ema(&mut self, ema: &[f32]) -> Result<()> {
        let s = self.dev.stream.clone();
        let o = self.optim.as_mut().expect("attach_optimizer first");
        ensure!(
            ema.len() == o.range.len(),
            "the moving average has {} values, the optimizer updates {}",
            ema.len(),
            o.range.len()
        );
        o.ema = Some(s.clone_htod(ema)?);
        Ok(())
    }

    pub fn has_ema(&self) -> bool {
        self.optim.as_ref().is_some_and(|o| o.ema.is_some())
    }

    /// Pull the device's moving average towards the device's weights.
    pub fn ema_update(&mut self, decay: f64) -> Result<()> {
        let o = self.optim.as_mut().expect("attach_optimizer first");
        let ema = o.ema.as_mut().expect("attach_ema first");
        ema_dev(&self.dev, ema, &masters(&self.params, self.reads.is_some(), o.range.clone()), decay)?;
        Ok(())
    }

    /// The device parameters (with `opt`, the moments; with `ema`, the moving average) into the host
    /// copies (the moments and the average of the optimizer's range: a ZeRO-1 shard's alone; with
    /// [`GpuModel::shards_masters`], the parameters too: the other ranks' parts of `params` are left
    /// as they were).
    pub fn download_state(
        &mut self,
        params: &mut Params<f32>,
        opt: Option<&mut AdamW>,
        ema: Option<&mut [f32]>,
    ) -> Result<()> {
        ensure!(self.sized, "the model holds no parameters before its optimizer or first upload");
        let s = &self.dev.stream;
        match (self.reads.is_some(), self.optim.as_ref()) {
            (true, Some(o)) => {
                let mine = o.range.clone();
                s.memcpy_dtoh(&masters(&self.params, true, mine.clone()), &mut params.data[mine])?
            }
            _ => s.memcpy_dtoh(&self.params.slice(0..self.lay.numel), &mut params.data)?,
        }
        if let (Some(opt), Some(o)) = (opt, self.optim.as_ref()) {
            s.memcpy_dtoh(&o.m, &mut opt.m)?;
            s.memcpy_dtoh(&o.v, &mut opt.v)?;
        }
        if let (Some(ema), Some(e)) = (ema, self.optim.as_ref().and_then(|o| o.ema.as_ref())) {
            s.memcpy_dtoh(e, ema)?;
        }
        Ok(())
    }
}

/// The f32 masters of the parameters in `range` (the optimizer's): in `params` at `range`, or at its
/// start when `params` holds the shard alone (`shard_only`).
fn masters(params: &CudaSlice<f32>, shard_only: bool, range: Range<usize>) -> CudaView<'_, f32> {
    match shard_only {
        true => params.slice(0..range.len()),
        false => params.slice(range),
    }
}

/// Sum `grads[range]` over the ranks of `comm` once `compute` has written it (the communicator's
/// stream waits for the work queued on `compute` so far; the host does not): to every rank, or with
/// ZeRO-1 shards of `shard_part` values each shard's piece to the rank that owns it (a reduce-scatter's
/// bytes, not an all-reduce's).
pub(super) fn reduce_part(
    grads: &mut CudaSlice<f32>,
    range: Range<usize>,
    shard_part: Option<usize>,
    comm: &mut NcclComm,
    compute: &CudaStream,
) -> Result<()> {
    comm.after(compute)?;
    match shard_part {
        None => {
            tag(comm, "gradient bucket");
            comm.all_reduce_sum_part(grads, range)?
        }
        Some(part) => {
            for owner in range.start / part..range.end.div_ceil(part) {
                let piece = range.start.max(owner * part)..range.end.min((owner + 1) * part);
                tag(comm, "gradient bucket (ZeRO-1 shards)");
                comm.reduce_sum_part(grads, piece, owner)?;
            }
        }
    }
    Ok(())
}

/// Wait (on the host, under the watchdog) for the collectives enqueued on `comm`, and order `compute`'s
/// next work after them.
fn collectives_done(comm: &mut NcclComm, compute: &CudaStream, op: &'static str) -> Result<()> {
    comm.wait(op)?;
    comm.before(compute)?;
    Ok(())
}

/// The next collective on `comm` is for `what` (its line in the flight record).
pub(super) fn tag(comm: &NcclComm, what: &'static str) {
    if let Some(f) = comm.flight() {
        f.tag_next(what);
    }
}
