//! AdamW and global-norm clipping on the device (adamw.cu), the twins of `optim::AdamW::update` and
//! `optim::clip_grad_norm`: with them the parameters and moments stay on the GPU between steps and come
//! back only for checkpoints, sample grids and validation.

use anyhow::{ensure, Result};
use cudarc::driver::CudaSlice;
use infinity_kernels::adamw::AdamWScalars;
use infinity_kernels::cuda::ops::{adamw_dev, ema_dev, sum_squares_dev};

use super::GpuModel;
use crate::model::Params;
use crate::optim::AdamW;

/// The moments and the weight-decay mask on the device, and the weights' moving average when the run
/// keeps one here.
pub struct DeviceAdamW {
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    decay: CudaSlice<u8>,
    ema: Option<CudaSlice<f32>>,
}

impl GpuModel {
    /// Move AdamW's state (a whole one, not a ZeRO-1 shard) onto the device.
    pub fn attach_optimizer(&mut self, opt: &AdamW) -> Result<()> {
        ensure!(opt.range == (0..self.lay.numel), "the device optimizer needs the whole AdamW state");
        let s = &self.dev.stream;
        let mask: Vec<u8> = opt.decay_mask().iter().map(|&d| d as u8).collect();
        let (m, v, decay) = (s.clone_htod(&opt.m)?, s.clone_htod(&opt.v)?, s.clone_htod(&mask)?);
        self.optim = Some(DeviceAdamW { m, v, decay, ema: None });
        Ok(())
    }

    /// A fresh AdamW state (zero moments, made on the device; the layout's weight-decay groups): what a
    /// benchmark times the update with, without a host copy of the moments.
    pub fn attach_fresh_optimizer(&mut self) -> Result<()> {
        let s = &self.dev.stream;
        let mask: Vec<u8> = crate::optim::decay_mask(&self.lay).iter().map(|&d| d as u8).collect();
        let (m, v) = (s.alloc_zeros(self.lay.numel)?, s.alloc_zeros(self.lay.numel)?);
        self.optim = Some(DeviceAdamW { m, v, decay: s.clone_htod(&mask)?, ema: None });
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

    /// Average the device gradients over the ranks of `comm`: an NCCL all-reduce sums them in place,
    /// and the `1/world` is left to the update (`grad_scale`), which reads them anyway.
    pub fn reduce_grads_nccl(&mut self, comm: &mut infinity_launcher::comm::NcclComm) -> Result<()> {
        use infinity_launcher::comm::Communicator;
        ensure!(self.grad_scale == 1.0, "reduce the gradients before clipping them");
        comm.all_reduce_sum_device(&mut self.grads)?;
        comm.wait("all_reduce")?;
        self.grad_scale = 1.0 / comm.world() as f64;
        Ok(())
    }

    /// Clip the gradients' global norm to at most `max_norm`; returns the norm before (the CPU's
    /// arithmetic: f64 sum of squares, `optim::clip_coef`). Of the gradients as
    /// the update will see them (times `grad_scale`), and the coefficient joins `grad_scale`: no pass
    /// over the gradients but the sum of squares.
    pub fn clip_grads(&mut self, max_norm: f64) -> Result<f64> {
        let norm = sum_squares_dev(&self.dev, &self.grads)?.sqrt() * self.grad_scale;
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
        // the bf16 GEMMs' copy of the weights is written by the same pass
        adamw_dev(
            &self.dev,
            &mut self.params,
            self.params16.as_mut(),
            &self.grads,
            &mut o.m,
            &mut o.v,
            &o.decay,
            &scalars,
        )?;
        (self.params16_stale, self.grad_scale) = (false, 1.0);
        Ok(())
    }

    /// Keep the weights' moving average on the device from now on, starting from `ema` (after
    /// [`GpuModel::attach_optimizer`]).
    pub fn attach_ema(&mut self, ema: &[f32]) -> Result<()> {
        ensure!(
            ema.len() == self.lay.numel,
            "the moving average has {} values, the model {}",
            ema.len(),
            self.lay.numel
        );
        let s = self.dev.stream.clone();
        let o = self.optim.as_mut().expect("attach_optimizer first");
        o.ema = Some(s.clone_htod(ema)?);
        Ok(())
    }

    pub fn has_ema(&self) -> bool {
        self.optim.as_ref().is_some_and(|o| o.ema.is_some())
    }

    /// Pull the device's moving average towards the device's weights.
    pub fn ema_update(&mut self, decay: f64) -> Result<()> {
        let ema = self.optim.as_mut().and_then(|o| o.ema.as_mut()).expect("attach_ema first");
        ema_dev(&self.dev, ema, &self.params, decay)?;
        Ok(())
    }

    /// The device parameters (with `opt`, the moments; with `ema`, the moving average) into the host
    /// copies.
    pub fn download_state(
        &mut self,
        params: &mut Params<f32>,
        opt: Option<&mut AdamW>,
        ema: Option<&mut [f32]>,
    ) -> Result<()> {
        let s = &self.dev.stream;
        s.memcpy_dtoh(&self.params, &mut params.data)?;
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
