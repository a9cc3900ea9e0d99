//! `infinity train`: the training loop, in one readable function (the session it runs in: `session.rs`;
//! the dataset and model it sets up: `setup.rs`; the state it starts from: `start_state.rs`).
//!
//! Every random choice (initial weights, data order, self-correction flips, condition dropout, drop
//! path) comes from a stream keyed by (seed, step, sample id), so a run is a pure function of its
//! config and a resumed run continues bit for bit: a checkpoint needs no RNG state beyond the step.

pub mod check;
pub mod checkpoint;
pub mod compute;
pub mod config;
mod console;
pub mod dist;
mod ema;
pub mod gpu_fit;
pub mod init_from;
pub mod log;
pub mod mfu;
mod micro_batch;
mod preview;
pub mod rank_identity;
pub mod rank_times;
pub mod run_lock;
pub mod rundir;
mod saver;
pub mod seen;
mod session;
mod setup;
pub mod spike;
pub(crate) mod start_state;
mod step_means;
pub mod step_rows;
pub mod stop;
mod summary;
mod tb_log;
mod token_mix;
mod updater;
pub mod val;
pub mod watchdog;
pub mod zero1;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use infinity_data::loader::plan::keyed_rng;
use infinity_data::loader::Loader;
use infinity_kernels::rope::RopeTable;
use rand::Rng;

use self::checkpoint::TrainState;
use self::config::TrainConfig;
use self::log::{Logger, StepMetrics};
use self::micro_batch::{prepare, Draws};
pub(crate) use self::preview::Preview;
use self::rank_times::RankTimes;
use self::session::Session;
pub(crate) use self::setup::check_mixable;
pub use self::setup::{check_schedules_fit, micro_steps, Setup, Unrecoverable};
pub(crate) use self::setup::{loader_options, unrecoverable};
use self::spike::{SpikeLimits, SpikeWindow, Verdict};
pub use self::start_state::fresh_weights;
pub(crate) use self::start_state::{starting_state, Start};
use self::step_means::StepMeans;
use self::summary::{derived_record, write_run_file};
pub use self::token_mix::TokenMix;
use self::updater::Updater;
use crate::model::{rope_for, scale_metrics, token_weights, Acts};

/// Keys of the random streams (see the module comment).
const STREAM_INIT: u64 = 1;
pub(crate) const STREAM_FLIPS: u64 = 2;
pub(crate) const STREAM_DROP: u64 = 3;
pub(crate) const STREAM_DROP_PATH: u64 = 4;
pub(crate) const STREAM_SHORT_CAPTION: u64 = 5;

#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from a checkpoint folder (`Some`), found by [`checkpoint::complete`] for `--resume auto`.
    pub resume: Option<PathBuf>,
    /// Stop after this step as if interrupted (tests and preemption drills).
    pub stop_after: Option<u64>,
    /// Set asynchronously (SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, SIGQUIT): all ranks checkpoint at the
    /// same step and stop.
    pub stop: Option<Arc<AtomicBool>>,
    /// Resume on a dataset changed since the checkpoint (`--accept-data-change`: a mended shard), from
    /// the saved position ([`start_state::continue_position`]).
    pub accept_data_change: bool,
    /// A fresh start (no `--resume`): a `run.dir` that holds a run is refused, checked again once rank 0
    /// holds the run's lock (another fresh start may have trained there since the command line's check).
    pub fresh_start: bool,
    /// `--resume auto`, or a restarted group: `resume` is run.dir's newest checkpoint as found once rank
    /// 0 holds the run's lock (`resume` as given where run.dir has none). A lost attempt (a requeued
    /// job's, a restarted group's) may still be writing its stop's checkpoint: rank 0 waits for its lock,
    /// as for any resume, and what it wrote is then taken, not the checkpoint before it.
    pub resume_auto: bool,
}

#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    /// The step the run is at, and the one this session started from (0: a fresh start).
    pub steps: u64,
    pub started_at: u64,
    pub last_loss: f64,
    pub last_bit_acc: f64,
    pub skipped_steps: u64,
    pub seconds: f64,
    /// The newest checkpoint known complete: rank 0's own; on another rank the newest complete one in
    /// `run.dir` as it stopped (rank 0 may still be writing a later one: `unconfirmed_checkpoint`).
    pub last_checkpoint: Option<PathBuf>,
    /// The step of a checkpoint rank 0 was still writing (in the background) when this rank stopped, so
    /// not known to be complete (other ranks only).
    pub unconfirmed_checkpoint: Option<u64>,
    /// Stopped by `TrainOptions::stop` (preemption) after checkpointing.
    pub preempted: bool,
    /// The last held-out validation loss, when validation is configured, and its step.
    pub last_val_loss: Option<f64>,
    pub last_val_step: Option<u64>,
    /// Stopped by `optim.max_nonfinite` consecutive non-finite steps.
    pub diverged: bool,
    /// TensorBoard writes that failed this session (their events are lost; later ones are retried).
    pub tensorboard_failed_writes: u64,
    /// Checkpoint writes that failed this session and training went on after
    /// (`checkpoint.failed_writes_tolerated`).
    pub checkpoint_failed_writes: u64,
}

/// Run (or resume) training as `cfg` says.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    // ---- setup: data, model, device, group, run folder ---------------------------------------
    // (a stop signal ends the process at once until the run folder is first changed: nothing trained)
    let setup = stop::SetupGuard::start(&opts.stop);
    // (`lock` holds the run folder's lock until the session ends)
    let Session {
        ds,
        mc,
        lay,
        mix,
        mut compute,
        mut dist,
        config_toml,
        micro_batch,
        accum,
        peak_tflops,
        mut summary,
        mut lock,
    } = Session::start(cfg, opts, &setup)?;
    let (manifest, leader, run) = (ds.manifest.clone(), dist.is_leader(), &cfg.run.dir);
    // (`--resume auto`: looked for again now that rank 0 holds the lock)
    // (an explicit step this run rewound to before, with the same config: its history continues)
    let newest;
    let opts = match (opts.resume_auto, opts.resume.as_deref()) {
        (true, given) => {
            newest = TrainOptions { resume: start_state::agreed_newest(run, given, &mut dist)?, ..opts.clone() };
            &newest
        }
        (false, Some(given)) => match start_state::repeated_rewind(run, given, &config_toml, &ds, &mut dist)? {
            Some(resume) => {
                newest = TrainOptions { resume: Some(resume), ..opts.clone() };
                &newest
            }
            None => opts,
        },
        (false, None) => opts,
    };

    // ---- state: fresh or resumed -------------------------------------------------------------
    let Start { mut params, opt, saved, init_from: init_source } =
        starting_state(cfg, opts, (&mc, &lay), &config_toml, (&ds, dist.rank, dist.world))?;
    dist.agree_on_start(saved.as_ref(), opts.resume.as_deref())?;
    if let Some(s) = saved.as_ref().filter(|s| s.step >= cfg.run.steps) {
        console!("the run is at step {} (run.steps = {}): nothing to train", s.step, cfg.run.steps);
        return summary.nothing_to_train(s, opts.resume.clone());
    }
    let lo = loader_options(cfg, dist.rank, dist.world);
    // a saved position this config cannot continue (another seed, batch or dataset) stays refused
    let mut loader =
        Loader::new(ds.clone(), lo, saved.as_ref().map(|s| s.loader.clone())).map_err(|e| unrecoverable(e.into()))?;
    let resumed = saved.is_some();
    let mut state = saved.unwrap_or_else(|| TrainState { init_from: init_source, ..TrainState::fresh(loader.state()) });
    // (the ranks this session's checkpoints record)
    state.world_size = Some(dist.world);
    // (per bucket: tokens per sample and training FLOPs per token, which each step's counts add)
    let costs = seen::bucket_costs(&mc, &manifest, &mix.flops_per_token);
    if leader && state.seen.is_none() {
        let without = "metrics.jsonl and val.jsonl have no samples_seen, tokens_seen or flops_seen for this run";
        // (this folder's log, or where it has none yet, that of the checkpoint's run folder)
        let source = opts.resume.as_deref().and_then(checkpoint::run_folder_of);
        let log = match run.join("metrics.jsonl").is_file() {
            true => run.as_path(),
            false => source.unwrap_or(run),
        };
        state.seen = seen::Seen::recounted(log, state.step, &costs, without);
    }
    // the spike guard's window continues from the checkpoint's (kept with the guard off too: its
    // z-scores are logged)
    let spike_limits = SpikeLimits::of(&cfg.optim);
    state.spike_window = Some(SpikeWindow::resumed(state.spike_window.take(), spike_limits.window));
    // every rank starts from rank 0's weights (they agree already; this makes it a guarantee)
    dist.tag("initial weights");
    dist.broadcast(&mut params.data)?;
    // the optimiser on the device or the host, its whole state or (ZeRO-1) this rank's shard of it
    let sharded = cfg.dist.zero1 && dist.world > 1;
    let (mut opt, mut updater) = Updater::place(cfg, sharded, lay.numel, opt, &mut compute, &mut dist)?;
    let (mut ema, ema_sharded) = ema::start(cfg, opts.resume.as_deref(), (&mc, &lay), &params, &dist, &mut compute)?;
    let preview = if leader { Some(Preview::new(cfg, &mc, &ds)?) } else { None };
    let validator = val::Validator::new(cfg, &mc, &ds, micro_batch).map_err(unrecoverable)?;
    for w in validator.as_ref().filter(|_| leader).map(val::Validator::warnings).unwrap_or_default() {
        tracing::warn!("{w}");
    }
    if let (Some(v), Some(saved), true) = (validator.as_ref(), state.val_sets.as_ref(), leader) {
        for w in v.changed_since(saved, state.step) {
            tracing::warn!("{w}");
        }
    }
    state.val_sets = validator.as_ref().map(val::Validator::fingerprints);
    // the run folder changes only now, when nothing can refuse the run: a resume refused above (another
    // model, seed, dataset or validation set) leaves its config, derived sizes, logs and later
    // checkpoints as they were (and from now on a stop signal stops the run after a step, checkpointed)
    setup.stop_together(&mut dist, &opts.stop)?;
    setup.done(leader);
    if let Some(l) = lock.as_mut() {
        l.keep();
    }
    if leader && resumed {
        // a new history from an earlier checkpoint: the later ones would be taken for its newest
        if let Some((dir, what)) = checkpoint::set_aside_later(run, state.step)? {
            state.forked_at = Some(state.step);
            tracing::warn!(
                "resuming at step {} where this run folder has {what}: they are of the history this run \
                 replaces; moved to {}",
                state.step,
                dir.display()
            );
        }
    }
    if leader {
        write_run_file(run, "config.toml", &config_toml)?;
        let position = loader.state();
        let mut derived = derived_record(cfg, &ds, (&mc, &lay), (&mix, &position), (accum, micro_batch, dist.world))?;
        // (a fine-tune's source, as its checkpoints keep it: the config's path alone may lead elsewhere now)
        if let Some(source) = &state.init_from {
            derived["init_from"] = serde_json::to_value(source)?;
        }
        write_run_file(run, "derived.json", &serde_json::to_string_pretty(&derived)?)?;
    }
    // only rank 0 writes logs, sample grids and checkpoints
    let mut logger = match leader {
        true => Some(Logger::open(run, &config_toml, state.step, cfg.run.steps, cfg.run.log_every)?),
        false => None,
    };
    if let Some(l) = logger.as_mut() {
        l.rank_hosts(dist.hosts()); // (the straggler warnings name the host)
        l.bucket_names(manifest.schedules.iter().map(|s| s.name.clone()).collect());
        l.dataset_names(log::dataset_names(&ds));
    }
    if resumed {
        summary.resumed(&state, opts.resume.clone())?;
    }
    let keep = (cfg.checkpoint.keep_last, cfg.checkpoint.keep_every);
    // (the summary on disk now: the one a stop rewrites while its checkpoint is being written)
    let mut saver = match summary.text_at(&state)? {
        Some(text) => {
            let on_disk = saver::SummaryOnDisk { step: state.step, text, stopped: false };
            let tolerated = cfg.checkpoint.failed_writes_tolerated;
            Some(saver::Saver::new(run, (&mc, &lay, &config_toml), (keep, tolerated), on_disk))
        }
        None => None,
    };
    // hyperparameters once per run folder: when it starts from step 0, or from a checkpoint outside it (a
    // branch, whose folder has no row of its own yet: another run's, a copy, an abandoned history's)
    let inside = |ckpt: &Path| matches!((ckpt.canonicalize(), run.canonicalize()), (Ok(c), Ok(r)) if c.starts_with(&r));
    let branch = opts.resume.as_deref().is_some_and(|ckpt| !inside(ckpt));
    if let Some(l) = logger.as_mut().filter(|_| state.step == 0 || branch) {
        l.hparams(cfg, &mc, lay.numel, dist.world);
    }

    // ---- the loop ------------------------------------------------------------------------------
    let schedule = cfg.schedule();
    let mut grads = updater.host_grads(&lay);
    let mut acts: Acts<f32> = Acts::default();
    let mut ropes: HashMap<u16, RopeTable> = HashMap::new();
    summary.start_clock();
    let mut clock = saver::CheckpointClock::new(cfg.checkpoint.every_minutes);
    let first_step = state.step;
    let watchdog = watchdog::Watchdog::start(cfg.run.stall_timeout_s, (dist.rank, dist.world), cfg.dist.timeout_s)
        .map_err(setup::unrecoverable)?;
    let beat = |phase: &dyn Fn() -> String| {
        if let Some(w) = watchdog.as_ref() {
            w.beat(phase());
        }
    };
    while state.step < cfg.run.steps {
        dist.at_step(state.step + 1);
        let t0 = Instant::now();
        beat(&|| format!("reading the batch of step {}", state.step + 1));
        watchdog::stall_drill(dist.rank, state.step + 1, dist.attempt);
        let batch = loader.next_batch().with_context(|| format!("reading the batch of step {}", state.step + 1))?;
        beat(&|| format!("the forward and backward of step {}", state.step + 1));
        let mut data_s = t0.elapsed().as_secs_f64(); // this rank's wait for its data, in its own work
        let sched = &manifest.schedules[batch.bucket as usize];
        let scales = mc.token_scales(&sched.hw()); // the transformer's (spatial patchify halves them)
        let num_tokens = costs[batch.bucket as usize].0; // (per sample; what MFU and `tokens_seen` count)
        let rope = ropes.entry(batch.bucket).or_insert_with(|| rope_for(&mc, sched));
        grads.data.fill(0.0);
        compute.begin_step(&params)?;
        // (a dataset of bits alone self-corrects on the host: its stored bits are the labels)
        let on_device = compute.self_corrects() && manifest.latent.is_some();
        // (every micro-batch holds `micro_batch` samples)
        // (bitloss = "sum": each token's weight times d, its loss and gradient a sum over its bits)
        let bits = cfg.loss.bitloss.scale(mc.d);
        let weights: Vec<f64> = token_weights(micro_batch, &scales, cfg.loss.reweight_by_scale)
            .iter()
            .map(|w| w * bits / accum as f64)
            .collect();
        let draws = Draws::training(cfg, &mc, state.step);
        let (mut loss, mut bit_acc, mut per_scale) = (0.0, 0.0, Vec::new());
        for micro in 0..accum {
            let rows = micro * micro_batch..(micro + 1) * micro_batch;
            let tp = Instant::now();
            let mb = prepare(&mc, &manifest, &batch, rows, &sched.hw(), draws, on_device)
                .map_err(|e| micro_batch::name_the_row(e, &batch, &ds))
                .with_context(|| format!("preparing the batch of step {}", state.step + 1))?;
            data_s += tp.elapsed().as_secs_f64();
            let inp = mb.input(&mc, &scales, rope, &weights, cfg.loss.label_smoothing);
            let device_bsc = on_device.then_some(((&mb.latents[..], &mb.keys[..]), (draws.p_max, draws.apply_layers)));
            let last = (micro + 1 == accum).then_some(&mut dist);
            let ce = compute.micro_step((&mc, &lay), &params, &inp, device_bsc, &mut acts, &mut grads, last)?;
            loss += ce.loss / bits; // (logged per bit)
            bit_acc += ce.correct_bits.iter().map(|&c| c as f64).sum::<f64>()
                / (ce.correct_bits.len() * mc.d) as f64
                / accum as f64;
            per_scale.push(scale_metrics(&ce, mb.b, &scales, mc.d));
        }
        compute.end_step(&mut grads)?;
        let (bucket, batch_rows, part) = (batch.bucket, batch.len(), batch.part);
        // (the spike guard's level is a bucket's of a dataset: a mix's datasets differ in loss too)
        let level = part.saturating_mul(manifest.schedules.len() as u16).saturating_add(bucket);
        loader.recycle(batch); // (its buffers are the reader thread's next batch's)
        let this_rank = StepMeans::over_micro_steps((loss, bit_acc), &per_scale, &scales, accum);
        dist::slow_drill(dist.rank, dist.attempt);
        // the means over the ranks; each rank's own work so far rides on their all-reduce (see
        // rank_times.rs)
        let t_opt = Instant::now();
        beat(&|| format!("the all-reduces and optimiser step of step {}", state.step + 1));
        let mut reduced = this_rank.to_vec();
        let n_metrics = reduced.len();
        if dist.world > 1 {
            reduced.extend(RankTimes::slots(dist.rank, dist.world, t0.elapsed().as_secs_f64(), data_s));
        }
        dist.mean_metrics(&mut reduced)?;
        let rank_times = (dist.world > 1).then(|| RankTimes::from_slots(&reduced[n_metrics..], dist.world, true));
        let means = StepMeans::from_vec(&reduced[..n_metrics], scales.len());
        // average over ranks (each rank's gradient is the mean over its slice of the global batch), clip
        let clip = crate::optim::clip_at(cfg.optim.clip, cfg.optim.clip_decay, state.step, cfg.run.steps);
        let grad_norm = updater.reduce_and_clip(&mut compute, &mut dist, &mut grads.data, clip)?;
        let lr = schedule.lr(state.step, cfg.run.steps);
        // (upstream's twde: a weight decay that changes over the run, where one is set)
        let adamw = &cfg.optim.adamw;
        let weight_decay = adamw.weight_decay_end.map(|_| adamw.weight_decay_at(state.step, cfg.run.steps));
        let finite = means.loss.is_finite() && grad_norm.is_finite();
        let spike = match state.spike_window.as_mut() {
            Some(w) if finite => w.judge(&spike_limits, (means.loss, level), grad_norm),
            _ => Verdict::default(),
        };
        if let Some(why) = &spike.skip {
            state.skipped_steps += 1;
            state.nonfinite_run = 0;
            tracing::warn!("step {}: {why}; update skipped", state.step + 1);
        } else if finite {
            state.nonfinite_run = 0;
            if let Some(wd) = weight_decay {
                opt.set_weight_decay(wd);
            }
            updater.update(&mut compute, &mut dist, &mut opt, &mut params.data, &grads.data, lr)?;
            if let Some(e) = ema.as_mut() {
                compute.update_ema(e, &params)?;
            }
        } else {
            state.skipped_steps += 1;
            state.nonfinite_run += 1;
            // (which of the two, where one is finite)
            let what = match (means.loss.is_finite(), grad_norm.is_finite()) {
                (false, true) => format!("non-finite loss {} (grad norm {grad_norm})", means.loss),
                (true, false) => format!("non-finite grad norm {grad_norm} (loss {})", means.loss),
                _ => format!("non-finite loss {} and grad norm {grad_norm}", means.loss),
            };
            tracing::warn!("step {}: {what}; update skipped", state.step + 1);
        }
        let optimizer_s = t_opt.elapsed().as_secs_f64();
        // this step stops the run, once it is logged
        let diverged = state.nonfinite_run >= cfg.optim.max_nonfinite;
        state.step += 1;
        state.loader = loader.state();
        if state.step == first_step + 1 {
            tracing::info!("first step done, {:.2} s after start", summary.seconds());
        }

        // ---- logging -----------------------------------------------------------------------------
        let secs = t0.elapsed().as_secs_f64();
        let samples = (batch_rows * dist.world) as f64;
        let tokens = samples * num_tokens as f64;
        let flops = costs[bucket as usize].1 * tokens;
        if let Some(seen) = state.seen.as_mut() {
            seen.add(samples as u64, costs[bucket as usize].0, costs[bucket as usize].1);
        }
        summary.stepped(means.loss, means.bit_acc);
        let step_metrics = StepMetrics {
            step: state.step,
            time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            loss: means.loss,
            loss_token_mean: cfg.loss.reweight_by_scale.then(|| means.token_mean_loss(&scales)),
            bit_acc: means.bit_acc,
            token_acc: means.token_acc,
            lr,
            weight_decay,
            clip: cfg.optim.clip_decay.then_some(clip),
            grad_norm,
            global_batch: (batch_rows * dist.world) as u64,
            samples_seen: state.seen.map(|s| s.samples),
            tokens_seen: state.seen.map(|s| s.tokens),
            flops_seen: state.seen.map(|s| s.flops),
            tokens_per_s: tokens / secs,
            samples_per_s: samples / secs,
            step_time_s: secs,
            data_s,
            optimizer_s,
            tflops_per_device: flops / dist.world as f64 / secs / 1e12,
            mfu: peak_tflops.map(|p| mfu::mfu(flops, secs, dist.world, p)),
            bucket,
            dataset: (ds.parts().len() > 1).then_some(part),
            scale_loss: means.scale_loss,
            scale_bit_acc: means.scale_bit_acc,
            scale_token_acc: means.scale_token_acc,
            skipped_steps: state.skipped_steps,
            loss_z: spike.loss_z,
            grad_norm_z: spike.grad_norm_z,
            ranks: rank_times,
            gpu_mem_peak_gib: compute.gpu_memory_peak().map(|b| b as f64 / (1u64 << 30) as f64),
        };
        beat(&|| format!("logging step {}", state.step));
        if let Some(l) = lock.as_ref() {
            // (a run folder removed meanwhile: no restart mends it)
            l.check_in_place(run).map_err(setup::unrecoverable)?;
        }
        if let Some(log) = logger.as_mut() {
            log.step(&step_metrics)?;
            if let Some(p) = preview.as_ref().filter(|p| p.due(state.step) && !diverged) {
                beat(&|| format!("drawing the sample grid of step {}", state.step));
                // (on a GPU with its optimizer, the grid is drawn from the device's weights)
                // (logging never stops training: weights whose logits are not finite draw no grid)
                if let Err(e) = p.log((&mc, &lay), compute.sampler(&params)?, state.step, log) {
                    tracing::warn!("step {}: sample grid: {e:#}", state.step);
                }
            }
        }
        if diverged {
            return Err(stop::diverged(&state, run, saver.as_mut(), logger.as_mut(), &mut summary));
        }
        if let Some(v) = validator.as_ref().filter(|v| v.due(state.step)) {
            beat(&|| format!("the validation at step {}", state.step));
            let (vm, sets) = v.run(cfg, (&mc, &lay), &params, &mut dist, &mut compute, &mut acts)?;
            summary.validated(state.step, vm.loss);
            if let Some(log) = logger.as_mut() {
                log.val((state.step, state.seen), &vm, &sets)?;
            }
        }

        // ---- checkpoint --------------------------------------------------------------------------
        beat(&|| format!("the stop-signal check and checkpoint of step {}", state.step));
        // preemption: every rank learns whether any rank was signalled, so all stop at this step; and
        // whether rank 0's clock says a checkpoint is due (checkpoint.every_minutes), so all save
        let stop = dist::is_set(&opts.stop);
        let writing = saver.as_ref().is_some_and(saver::Saver::writing);
        dist.tag("stop-signal and checkpoint-clock check");
        let [preempt, clock_due] = dist.any_each([stop, leader && clock.due() && !writing])?;
        if preempt {
            // (before the stop's checkpoint records its summary)
            summary.preempted();
            // the waits for the checkpoints below (an earlier one may still be in flight) may be cut short
            // (a SIGKILL after the launcher's grace): summary.json says now that the run was stopped, at
            // its last complete checkpoint (a failure to say so does not stop the checkpoint)
            if let Err(e) = saver.as_mut().map_or(Ok(()), saver::Saver::stopped_by_signal) {
                tracing::warn!("{e:#}");
            }
        }
        let last = preempt || state.step == cfg.run.steps || opts.stop_after == Some(state.step);
        let mut save = due(state.step, cfg.checkpoint.every, cfg.run.steps) || preempt || clock_due;
        if save && state.nonfinite_run > 0 && !last {
            // (the updates were skipped, so the weights are those before the streak: its checkpoint would
            // only carry the streak's count into a resume, and push the last clean one out of keep_last)
            save = false;
            if leader {
                tracing::warn!(
                    "step {}: checkpoint not written: {} in a row",
                    state.step,
                    crate::cli::plural(state.nonfinite_run as usize, "non-finite step")
                );
            }
        }
        if save {
            clock.saved();
            // (a write still in flight is waited for in `save`, after the gathers: the other ranks,
            // once they have sent their shards, never wait on rank 0's disk; the price is that rank 0
            // holds two copies of the state until the older one is written)
            compute.sync_host(&mut dist, &mut params, Some(&mut opt), ema.as_mut())?;
            // under ZeRO-1 every rank sends its moments to form the whole state (on rank 0)
            let whole = match sharded {
                true => dist::gather_optimizer(&mut dist, &opt, &lay)?,
                false => None,
            };
            let ema_whole = ema::whole(ema.as_ref(), ema_sharded, &mut dist, lay.numel)?;
            let tb_failed = logger.as_ref().map_or(0, Logger::tensorboard_failures);
            let summary_json = summary.for_checkpoint(&state, checkpoint::step_dir(run, state.step), tb_failed)?;
            if let Some(saver) = saver.as_mut() {
                let snap = saver::Snapshot {
                    params: params.clone(),
                    opt: whole.unwrap_or_else(|| opt.clone()),
                    ema: ema_whole,
                    state: state.clone(),
                    summary_json,
                };
                saver.save(snap, cfg.checkpoint.background, last)?;
                summary.checkpoint_writes_failed(saver.failed_writes());
            }
            if !cfg.checkpoint.background {
                // no rank runs ahead of (or exits before) a checkpoint every rank can resume from
                dist.barrier("checkpoint barrier")?;
            }
        }
        dist::fault_drill(dist.rank, state.step, dist.attempt);
        if preempt {
            if state.step < cfg.run.steps {
                dist.mark_stopped_early(state.step);
            }
            break;
        }
        if opts.stop_after == Some(state.step) {
            break;
        }
    }
    if let Some(l) = logger.as_mut() {
        l.finish();
    }
    beat(&|| format!("waiting for the checkpoint write of step {}", state.step));
    if let Some(saver) = saver.as_mut() {
        saver.finish()?; // the last checkpoint is on disk before the summary (or the console) says so
    }
    if let Some(l) = logger.as_ref().filter(|_| summary.is_preempted()) {
        // (by a signal or --time-limit: the command line says which)
        l.println(&format!("stopped after step {}: checkpoint saved", state.step));
    }
    summary.finish(&state, logger.as_ref().map_or(0, Logger::tensorboard_failures))
}

/// Whether something done every `every` steps (0: only at the end) and at the last step is due at `step`.
pub(crate) fn due(step: u64, every: u64, last: u64) -> bool {
    (every > 0 && step.is_multiple_of(every)) || step == last
}

fn keyed_seed(seed: u64, stream: u64) -> u64 {
    keyed_rng(seed, &[stream]).random()
}

/// `--resume auto`: the newest complete checkpoint of the run, if any.
pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    checkpoint::complete(run).pop().map(|c| c.1)
}
