//! What the training loop does once a step's update is done: log it (and draw a sample grid), stop a
//! diverged run, validate, and checkpoint and stop when due; and the session's end.

use anyhow::Result;

use super::log::{Logger, StepMetrics};
use super::trainer::{Stepped, Trainer};
use super::{checkpoint, due, ema, mfu, saver, stop, watchdog, zero1, TrainSummary};

impl Trainer<'_> {
    /// Adds the step's samples, tokens and FLOPs to what the run has seen (on every rank: its
    /// checkpoints carry them), and its loss to the session's summary.
    pub(super) fn count(&mut self, s: &Stepped) {
        let (tokens_per_sample, flops_per_token) = self.costs[s.bucket as usize];
        if let Some(seen) = self.state.seen.as_mut() {
            seen.add((s.rows * self.dist.world) as u64, tokens_per_sample, flops_per_token);
        }
        self.summary.stepped(s.means.loss, s.means.bit_acc);
    }

    /// Stops the run (exit 2) where its folder was removed or replaced meanwhile: no restart mends it.
    pub(super) fn check_run_folder(&self) -> Result<()> {
        match self.lock.as_ref() {
            Some(l) => l.check_in_place(&self.cfg.run.dir).map_err(super::setup::unrecoverable),
            None => Ok(()),
        }
    }

    /// Logs the step (rank 0), with a sample grid when due.
    pub(super) fn log(&mut self, s: &Stepped) -> Result<()> {
        let (cfg, step, world) = (self.cfg, self.state.step, self.dist.world);
        let secs = s.t0.elapsed().as_secs_f64();
        let samples = (s.rows * world) as f64;
        let (tokens_per_sample, flops_per_token) = self.costs[s.bucket as usize];
        let tokens = samples * tokens_per_sample as f64;
        let flops = flops_per_token * tokens;
        let means = &s.means;
        let step_metrics = StepMetrics {
            step,
            time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            loss: means.loss,
            loss_token_mean: cfg.loss.reweight_by_scale.then(|| means.token_mean_loss(&s.scales)),
            bit_acc: means.bit_acc,
            token_acc: means.token_acc,
            lr: s.lr,
            weight_decay: s.weight_decay,
            clip: cfg.optim.clip_decay.then_some(s.clip),
            grad_norm: s.grad_norm,
            global_batch: (s.rows * world) as u64,
            samples_seen: self.state.seen.map(|v| v.samples),
            tokens_seen: self.state.seen.map(|v| v.tokens),
            flops_seen: self.state.seen.map(|v| v.flops),
            tokens_per_s: tokens / secs,
            samples_per_s: samples / secs,
            step_time_s: secs,
            data_s: s.data_s,
            optimizer_s: s.optimizer_s,
            tflops_per_device: flops / world as f64 / secs / 1e12,
            mfu: self.peak_tflops.map(|p| mfu::mfu(flops, secs, world, p)),
            bucket: s.bucket,
            dataset: (self.ds.parts().len() > 1).then_some(s.part),
            scale_loss: means.scale_loss.clone(),
            scale_bit_acc: means.scale_bit_acc.clone(),
            scale_token_acc: means.scale_token_acc.clone(),
            skipped_steps: self.state.skipped_steps,
            loss_z: s.spike.loss_z,
            grad_norm_z: s.spike.grad_norm_z,
            ranks: s.ranks.clone(),
            gpu_mem_peak_gib: self.compute.gpu_memory_peak().map(|b| b as f64 / (1u64 << 30) as f64),
        };
        self.beat(|| format!("logging step {step}"));
        let Some(log) = self.logger.as_mut() else { return Ok(()) };
        log.step(&step_metrics)?;
        if let Some(p) = self.preview.as_ref().filter(|p| p.due(step) && !s.diverged) {
            // (`self.beat` would borrow the logger `log` holds)
            watchdog::beat(self.watchdog.as_ref(), || format!("drawing the sample grid of step {step}"));
            // (on a GPU with its optimizer, the grid is drawn from the device's weights)
            // (logging never stops training: weights whose logits are not finite draw no grid)
            if let Err(e) = p.log((&self.mc, &self.lay), self.compute.sampler(&self.params)?, step, log) {
                tracing::warn!("step {step}: sample grid: {e:#}");
            }
        }
        Ok(())
    }

    /// The error that stops a run of `optim.max_nonfinite` non-finite steps in a row (see
    /// [`stop::diverged`]).
    pub(super) fn diverged(&mut self) -> anyhow::Error {
        // (the other ranks wait with rank 0 for the checkpoint in flight: exiting first, they would have
        // the launcher stop rank 0 before it settles the write and records the divergence)
        if let Err(e) = self.wait_for_write_in_flight() {
            tracing::warn!("{e:#}");
        }
        let (run, max) = (&self.cfg.run.dir, self.cfg.optim.max_nonfinite);
        let e = stop::diverged(&self.state, run, self.saver.as_mut(), self.logger.as_mut(), &mut self.summary);
        match e.downcast::<stop::Diverged>() {
            // (a streak shorter than the limit, which the run's last step ended in)
            Ok(stop::Diverged(why)) if self.state.nonfinite_run < max => stop::Diverged(format!(
                "{why}{} The run's last step was the last of them: fewer than optim.max_nonfinite = {max}, but no \
                 later step shows them over. Their updates were skipped: the last checkpoint holds the weights from \
                 before them, which gave them; sample or evaluate it before taking it for the run's result",
                if why.ends_with('.') { "" } else { "." }
            ))
            .into(),
            Ok(diverged) => diverged.into(),
            Err(e) => e,
        }
    }

    /// The held-out validation, when `val.every` says it is due.
    pub(super) fn validate_if_due(&mut self) -> Result<()> {
        let step = self.state.step;
        let Some(v) = self.validator.as_ref().filter(|v| v.due(step)) else { return Ok(()) };
        self.beat(|| format!("the validation at step {step}"));
        let (model, dist, compute, acts) = ((&self.mc, &self.lay), &mut self.dist, &mut self.compute, &mut self.acts);
        let (vm, sets) = v.run(self.cfg, model, &self.params, dist, compute, acts)?;
        self.summary.validated(step, vm.loss);
        if let Some(log) = self.logger.as_mut() {
            log.val((step, self.state.seen), &vm, &sets)?;
        }
        Ok(())
    }

    /// Checkpoints when due (`checkpoint.every`, the last step, `checkpoint.every_minutes`, a stop
    /// signal); true when the loop stops here (a stop signal on any rank, or `--stop-after`).
    pub(super) fn checkpoint_if_due(&mut self) -> Result<bool> {
        let (cfg, step, leader) = (self.cfg, self.state.step, self.dist.is_leader());
        self.beat(|| format!("the stop-signal check and checkpoint of step {step}"));
        // preemption: every rank learns whether any rank was signalled, so all stop at this step; and
        // whether rank 0's clock says a checkpoint is due (checkpoint.every_minutes), so all save
        let signalled = stop::is_set(&self.stop);
        let writing = self.saver.as_ref().is_some_and(saver::Saver::writing);
        self.dist.tag("stop-signal and checkpoint-clock check");
        let [preempt, clock_due, busy] =
            self.dist.any_each([signalled, leader && self.clock.due() && !writing, leader && writing])?;
        if preempt {
            // (before the stop's checkpoint records its summary)
            self.summary.preempted();
            // the waits for the checkpoints below (an earlier one may still be in flight) may be cut short
            // (a SIGKILL after the launcher's grace): summary.json says now that the run was stopped, at
            // its last complete checkpoint (a failure to say so does not stop the checkpoint)
            if let Err(e) = self.saver.as_mut().map_or(Ok(()), saver::Saver::stopped_by_signal) {
                tracing::warn!("{e:#}");
            }
        }
        let last = preempt || step == cfg.run.steps || self.stop_after == Some(step);
        let mut save = due(step, cfg.checkpoint.every, cfg.run.steps) || preempt || clock_due;
        if save && self.state.nonfinite_run > 0 && !last {
            // (the updates were skipped, so the weights are those before the streak: its checkpoint would
            // only carry the streak's count into a resume, and push the last clean one out of keep_last)
            save = false;
            if leader {
                let streak = crate::cli::plural(self.state.nonfinite_run as usize, "non-finite step");
                tracing::warn!("step {step}: checkpoint not written: {streak} in a row");
            }
        }
        if save && busy {
            self.wait_for_write_in_flight()?;
        }
        if save {
            self.save(last)?;
        }
        stop::fault_drill(self.dist.rank, step, self.dist.attempt);
        if preempt && step < cfg.run.steps {
            self.dist.mark_stopped_early(step);
        }
        Ok(preempt || self.stop_after == Some(step))
    }

    /// The group waits for rank 0's checkpoint write in flight (if any) together: a short collective every
    /// second until it is done, so that no rank's collective times out on rank 0's disk (a checkpoint
    /// due before the one before it is written, a divergence, whose ranks would otherwise wait in the
    /// next step's first collective, or exit, while rank 0 waits for its disk).
    fn wait_for_write_in_flight(&mut self) -> Result<()> {
        let (step, leader) = (self.state.step, self.dist.is_leader());
        let mut said = false;
        loop {
            self.beat(|| format!("waiting at step {step} for the checkpoint write in flight"));
            let writing = self.saver.as_ref().is_some_and(saver::Saver::writing);
            self.dist.tag("checkpoint write in flight");
            let [writing] = self.dist.any_each([writing])?;
            if !writing {
                break;
            }
            if leader && !said {
                said = true;
                tracing::warn!(
                    "step {step}: the checkpoint before is still being written: the group waits for it (checkpoints \
                     come due faster than the disk writes them: a larger checkpoint.every, or a faster disk)"
                );
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        Ok(())
    }

    /// Writes the checkpoint of this step (rank 0, in the background where `checkpoint.background`),
    /// the other ranks sending their shards; `last`: the session's last.
    fn save(&mut self, last: bool) -> Result<()> {
        let (cfg, lay) = (self.cfg, &self.lay);
        self.clock.saved();
        // (a write still in flight is waited for in `save`, after the gathers: the other ranks, once
        // they have sent their shards, never wait on rank 0's disk; the price is that rank 0 holds two
        // copies of the state until the older one is written)
        self.compute.sync_host(&mut self.dist, &mut self.params, Some(&mut self.opt), self.ema.as_mut())?;
        // under ZeRO-1 every rank sends its moments to form the whole state (on rank 0)
        let whole = match self.sharded {
            true => zero1::gather_optimizer(&mut self.dist, &self.opt, lay)?,
            false => None,
        };
        let ema_whole = ema::whole(self.ema.as_ref(), self.ema_sharded, &mut self.dist, lay.numel)?;
        let tb_failed = self.logger.as_ref().map_or(0, Logger::tensorboard_failures);
        let folder = checkpoint::step_dir(&cfg.run.dir, self.state.step);
        let summary_json = self.summary.for_checkpoint(&self.state, folder, tb_failed)?;
        if let Some(saver) = self.saver.as_mut() {
            if let Some(logger) = self.logger.as_ref() {
                logger.sync();
            }
            let snap = saver::Snapshot {
                params: self.params.clone(),
                opt: whole.unwrap_or_else(|| self.opt.clone()),
                ema: ema_whole,
                state: self.state.clone(),
                summary_json,
            };
            saver.save(snap, cfg.checkpoint.background, last)?;
            self.summary.checkpoint_writes_failed(saver.failed_writes());
        }
        if !cfg.checkpoint.background {
            // no rank runs ahead of (or exits before) a checkpoint every rank can resume from
            self.dist.barrier("checkpoint barrier")?;
        }
        Ok(())
    }

    /// The session's end: the logs closed, the last checkpoint on disk, and the summary.
    pub(super) fn finish(mut self) -> Result<TrainSummary> {
        let step = self.state.step;
        if let Some(l) = self.logger.as_mut() {
            l.finish();
        }
        self.beat(|| format!("waiting for the checkpoint write of step {step}"));
        if let Some(saver) = self.saver.as_mut() {
            saver.finish()?; // the last checkpoint is on disk before the summary (or the console) says so
            super::stop::last_checkpoint_written();
        }
        if let Some(l) = self.logger.as_ref().filter(|_| self.summary.is_preempted()) {
            // (by a signal or --time-limit: the command line says which)
            super::stop::first_to_announce_the_stop();
            l.println(&format!("stopped after step {step}: checkpoint saved"));
        }
        self.summary.finish(&self.state, self.logger.as_ref().map_or(0, Logger::tensorboard_failures))
    }
}
