//! The training loop's state, and its step: `train()` (mod.rs) sets up a [`Trainer`], then per step
//! calls [`Trainer::step`] (the batch, forward and backward, the all-reduces, the update) and the
//! methods of `after_step.rs` (log, validate, checkpoint, stop).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use infinity_data::loader::Loader;
use infinity_data::Dataset;
use infinity_kernels::rope::RopeTable;

use super::checkpoint::TrainState;
use super::compute::Compute;
use super::config::TrainConfig;
use super::dist::Dist;
use super::log::Logger;
use super::micro_batch::{self, prepare, Draws};
use super::rank_times::RankTimes;
use super::run_lock::RunLock;
use super::saver::{CheckpointClock, Saver};
use super::spike::{SpikeLimits, Verdict};
use super::step_means::StepMeans;
use super::stop;
use super::summary::SummaryFile;
use super::updater::Updater;
use super::{val, watchdog, Preview};
use crate::model::{rope_for, scale_metrics, token_weights, Acts, Layout, ModelConfig, Params};
use crate::optim::{AdamW, Ema, LrSchedule};

/// Everything the loop reads and changes from one step to the next.
///
/// The fields are declared in the order they drop where an error ends the session, as `train()`'s
/// locals dropped: the watchdog first, then the saver, which waits for a checkpoint still being
/// written while the group, the device and the run folder's lock are held (a rank 0 that closed its
/// communicator first would have the launcher stop the group before the write is done).
pub(super) struct Trainer<'a> {
    pub watchdog: Option<watchdog::Watchdog>,
    // ---- the run's records: rank 0 writes logs, sample grids and checkpoints
    pub saver: Option<Saver>,
    pub logger: Option<Logger>,
    pub preview: Option<Preview>,
    pub validator: Option<val::Validator>,
    // ---- buffers kept from step to step
    /// The gradient on the host (empty where the device keeps it), the activations, a RoPE table per bucket.
    pub grads: Params<f32>,
    pub acts: Acts<f32>,
    pub ropes: HashMap<u16, RopeTable>,
    // ---- the model and its optimiser
    pub ema: Option<Ema>,
    pub updater: Updater,
    pub opt: AdamW,
    pub params: Params<f32>,
    // ---- where the run is
    pub state: TrainState,
    pub loader: Loader,
    /// Rank 0's lock on the run folder, held as long as the session (one job per run folder).
    pub lock: Option<RunLock>,
    pub summary: SummaryFile<'a>,
    pub clock: CheckpointClock,
    // ---- the group and the device
    pub dist: Dist,
    pub compute: Compute,
    // ---- what no step changes
    pub cfg: &'a TrainConfig,
    pub ds: Arc<Dataset>,
    pub mc: ModelConfig,
    pub lay: Layout,
    /// Per bucket: tokens per sample and training FLOPs per token (what MFU and `*_seen` count).
    pub costs: Vec<(u64, f64)>,
    /// Samples per micro-batch, and micro-batches per rank and step.
    pub micro_batch: usize,
    pub accum: usize,
    /// The device's peak dense TFLOP/s that MFU is counted against (none: unknown).
    pub peak_tflops: Option<f64>,
    pub schedule: LrSchedule,
    pub spike_limits: SpikeLimits,
    /// The optimiser's state, and the EMA's weights, are sharded over the ranks (ZeRO-1).
    pub sharded: bool,
    pub ema_sharded: bool,
    /// The stop signal's flag, and the step after which to stop as if signalled (`--stop-after`).
    pub stop: Option<Arc<AtomicBool>>,
    pub stop_after: Option<u64>,
    /// The step this session started from.
    pub first_step: u64,
}

/// What a step leaves for its log line.
pub(super) struct Stepped {
    /// When the step began, how long its rank waited for data, and the all-reduces' and update's time.
    pub t0: Instant,
    pub data_s: f64,
    pub optimizer_s: f64,
    /// The means over the ranks (loss and accuracies, overall and per scale), and each rank's times.
    pub means: StepMeans,
    pub ranks: Option<RankTimes>,
    /// The transformer's scales of the step's bucket.
    pub scales: Vec<(usize, usize)>,
    pub bucket: u16,
    /// The dataset of a mix the batch came from, and the batch's samples on this rank.
    pub part: u16,
    pub rows: usize,
    pub lr: f64,
    pub weight_decay: Option<f64>,
    pub clip: f64,
    pub grad_norm: f64,
    pub spike: Verdict,
    /// `optim.max_nonfinite` non-finite steps in a row: the run stops once this step is logged.
    pub diverged: bool,
}

impl Trainer<'_> {
    /// Step `state.step + 1`: its batch, forward and backward over the micro-batches, the means over
    /// the ranks, and the update of the clipped gradient (or the skip of a spike or a non-finite step).
    pub(super) fn step(&mut self) -> Result<Stepped> {
        let (cfg, mc, next) = (self.cfg, &self.mc, self.state.step + 1);
        self.dist.at_step(next);
        let t0 = Instant::now();
        self.beat(|| format!("reading the batch of step {next}"));
        watchdog::stall_drill(self.dist.rank, next, self.dist.attempt);
        let batch = self.loader.next_batch().with_context(|| format!("reading the batch of step {next}"))?;
        self.beat(|| format!("the forward and backward of step {next}"));
        let mut data_s = t0.elapsed().as_secs_f64(); // this rank's wait for its data, in its own work
        let manifest = &self.ds.manifest;
        let sched = &manifest.schedules[batch.bucket as usize];
        let scales = mc.token_scales(&sched.hw()); // the transformer's (spatial patchify halves them)
        let rope = self.ropes.entry(batch.bucket).or_insert_with(|| rope_for(mc, sched));
        self.grads.data.fill(0.0);
        self.compute.begin_step(&self.params)?;
        // (a dataset of bits alone self-corrects on the host: its stored bits are the labels)
        let on_device = self.compute.self_corrects() && manifest.latent.is_some();
        // (every micro-batch holds `micro_batch` samples)
        // (bitloss = "sum": each token's weight times d, its loss and gradient a sum over its bits)
        let (micro_batch, accum) = (self.micro_batch, self.accum);
        let bits = cfg.loss.bitloss.scale(mc.d);
        let weights: Vec<f64> = token_weights(micro_batch, &scales, cfg.loss.reweight_by_scale)
            .iter()
            .map(|w| w * bits / accum as f64)
            .collect();
        let draws = Draws::training(cfg, mc, self.state.step);
        let (mut loss, mut bit_acc, mut per_scale) = (0.0, 0.0, Vec::new());
        for micro in 0..accum {
            let rows = micro * micro_batch..(micro + 1) * micro_batch;
            let tp = Instant::now();
            let mb = prepare(mc, manifest, &batch, rows, &sched.hw(), draws, on_device)
                .map_err(|e| micro_batch::name_the_row(e, &batch, &self.ds))
                .with_context(|| format!("preparing the batch of step {next}"))?;
            data_s += tp.elapsed().as_secs_f64();
            let inp = mb.input(mc, &scales, rope, &weights, cfg.loss.label_smoothing);
            let device_bsc = on_device.then_some(((&mb.latents[..], &mb.keys[..]), (draws.p_max, draws.apply_layers)));
            let last = (micro + 1 == accum).then_some(&mut self.dist);
            let (params, acts, grads) = (&self.params, &mut self.acts, &mut self.grads);
            let ce = self.compute.micro_step((mc, &self.lay), params, &inp, device_bsc, acts, grads, last)?;
            loss += ce.loss / bits; // (logged per bit)
            bit_acc += ce.correct_bits.iter().map(|&c| c as f64).sum::<f64>()
                / (ce.correct_bits.len() * mc.d) as f64
                / accum as f64;
            per_scale.push(scale_metrics(&ce, mb.b, &scales, mc.d));
        }
        self.compute.end_step(&mut self.grads)?;
        let (bucket, rows, part) = (batch.bucket, batch.len(), batch.part);
        // (the spike guard's level is a bucket's of a dataset: a mix's datasets differ in loss too)
        let level = part.saturating_mul(manifest.schedules.len() as u16).saturating_add(bucket);
        self.loader.recycle(batch); // (its buffers are the reader thread's next batch's)
        let this_rank = StepMeans::over_micro_steps((loss, bit_acc), &per_scale, &scales, accum);
        let (rank, world) = (self.dist.rank, self.dist.world);
        stop::slow_drill(rank, self.dist.attempt);
        // the means over the ranks; each rank's own work so far rides on their all-reduce (see
        // rank_times.rs)
        let t_opt = Instant::now();
        self.beat(|| format!("the all-reduces and optimiser step of step {next}"));
        let mut reduced = this_rank.to_vec();
        let n_metrics = reduced.len();
        if world > 1 {
            reduced.extend(RankTimes::slots(rank, world, t0.elapsed().as_secs_f64(), data_s));
        }
        self.dist.mean_metrics(&mut reduced)?;
        let ranks = (world > 1).then(|| RankTimes::from_slots(&reduced[n_metrics..], world, true));
        let means = StepMeans::from_vec(&reduced[..n_metrics], scales.len());
        // average over ranks (each rank's gradient is the mean over its slice of the global batch), clip
        let (step, steps) = (self.state.step, cfg.run.steps);
        let clip = crate::optim::clip_at(cfg.optim.clip, cfg.optim.clip_decay, step, steps);
        let grad_norm = self.updater.reduce_and_clip(&mut self.compute, &mut self.dist, &mut self.grads.data, clip)?;
        let lr = self.schedule.lr(step, steps);
        // (upstream's twde: a weight decay that changes over the run, where one is set)
        let adamw = &cfg.optim.adamw;
        let weight_decay = adamw.weight_decay_end.map(|_| adamw.weight_decay_at(step, steps));
        let spike = self.apply_or_skip(next, (means.loss, level), grad_norm, (lr, weight_decay))?;
        let optimizer_s = t_opt.elapsed().as_secs_f64();
        // this step stops the run, once it is logged: `optim.max_nonfinite` in a row, or fewer that the
        // run's last step ends in (no later step shows them over: the run is not called finished)
        let last = next == cfg.run.steps;
        let diverged = self.state.nonfinite_run >= cfg.optim.max_nonfinite || (last && self.state.nonfinite_run > 0);
        self.state.step = next;
        self.state.loader = self.loader.state();
        if next == self.first_step + 1 {
            tracing::info!("first step done, {:.2} s after start", self.summary.seconds());
        }
        Ok(Stepped {
            t0,
            data_s,
            optimizer_s,
            means,
            ranks,
            scales,
            bucket,
            part,
            rows,
            lr,
            weight_decay,
            clip,
            grad_norm,
            spike,
            diverged,
        })
    }

    /// Step `next`'s update, or its skip: the spike guard judges a finite step (its mean `loss` over the
    /// ranks at the spike `level` of its bucket, and `grad_norm`), AdamW at `lr` (and the moving average)
    /// follows where it passes; a skip is counted, a non-finite one in the run's streak too.
    fn apply_or_skip(
        &mut self,
        next: u64,
        (loss, level): (f64, u16),
        grad_norm: f64,
        (lr, weight_decay): (f64, Option<f64>),
    ) -> Result<Verdict> {
        let finite = loss.is_finite() && grad_norm.is_finite();
        let spike = match self.state.spike_window.as_mut() {
            Some(w) if finite => w.judge(&self.spike_limits, (loss, level), grad_norm),
            _ => Verdict::default(),
        };
        if let Some(why) = &spike.skip {
            self.state.skipped_steps += 1;
            self.state.nonfinite_run = 0;
            tracing::warn!("step {next}: {why}; update skipped");
        } else if finite {
            self.state.nonfinite_run = 0;
            if let Some(wd) = weight_decay {
                self.opt.set_weight_decay(wd);
            }
            let (params, grads) = (&mut self.params.data, &self.grads.data);
            self.updater.update(&mut self.compute, &mut self.dist, &mut self.opt, params, grads, lr)?;
            if let Some(e) = self.ema.as_mut() {
                self.compute.update_ema(e, &self.params)?;
            }
        } else {
            self.state.skipped_steps += 1;
            self.state.nonfinite_run += 1;
            // (which of the two, where one is finite)
            let what = match (loss.is_finite(), grad_norm.is_finite()) {
                (false, true) => format!("non-finite loss {loss} (grad norm {grad_norm})"),
                (true, false) => format!("non-finite grad norm {grad_norm} (loss {loss})"),
                _ => format!("non-finite loss {loss} and grad norm {grad_norm}"),
            };
            tracing::warn!("step {next}: {what}; update skipped");
        }
        Ok(spike)
    }

    /// Tells the stall watchdog (`run.stall_timeout_s`) what the rank does now.
    pub(super) fn beat(&self, phase: impl FnOnce() -> String) {
        watchdog::beat(self.watchdog.as_ref(), phase);
    }
}
