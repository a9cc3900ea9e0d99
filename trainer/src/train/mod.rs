//! `infinity train`: the session's start, then the training loop, whose steps a `Trainer` takes (the
//! session: `session.rs`; the dataset and model it sets up: `setup.rs`; the checkpoint it resumes:
//! `resume_point.rs`; the state it starts from: `start_state.rs`; a step: `trainer.rs`; what follows it:
//! `after_step.rs`).
//!
//! Every random choice (initial weights, data order, self-correction flips, condition dropout, drop
//! path) comes from a stream keyed by (seed, step, sample id), so a run is a pure function of its
//! config and a resumed run continues bit for bit: a checkpoint needs no RNG state beyond the step.

mod after_step;
pub mod check;
pub mod checkpoint;
pub mod compute;
pub mod config;
mod console;
pub mod dist;
mod divergence;
mod ema;
pub mod gpu_fit;
pub mod init_from;
pub mod log;
pub mod mfu;
mod micro_batch;
mod preview;
pub mod rank_identity;
pub mod rank_times;
pub(crate) mod resume_point;
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
mod trainer;
mod updater;
pub mod val;
pub mod watchdog;
pub mod zero1;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use infinity_data::loader::plan::keyed_rng;
use infinity_data::loader::Loader;
use rand::Rng;

use self::checkpoint::TrainState;
use self::config::TrainConfig;
use self::log::Logger;
pub(crate) use self::preview::Preview;
use self::session::Session;
pub(crate) use self::setup::check_mixable;
pub use self::setup::{check_schedules_fit, micro_steps, Setup, Unrecoverable};
pub(crate) use self::setup::{loader_options, unrecoverable};
use self::spike::{SpikeLimits, SpikeWindow};
pub use self::start_state::fresh_weights;
pub(crate) use self::start_state::{starting_state, Start};
use self::summary::{derived_record, write_run_file};
pub use self::token_mix::TokenMix;
use self::trainer::Trainer;
use self::updater::Updater;
use crate::model::Acts;

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
    /// The step since which the run has trained with this session's settings, on as many ranks, with
    /// this build (earlier plain restarts included): a divergence repeats from any checkpoint after it.
    pub same_settings_since: u64,
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
    resume_point::shared_by_every_rank(run, &mut dist)?;
    // (the step folder the command line names, where it names one: a repeated rewind resumes another)
    let named = opts.resume.clone().filter(|_| !opts.resume_auto);
    let opts =
        &TrainOptions { resume: resume_point::resume_point(opts, run, &config_toml, &ds, &mut dist)?, ..opts.clone() };

    // ---- state: fresh or resumed -------------------------------------------------------------
    // (a state the host cannot hold is refused, as `--check` refuses it, not aborted at its allocation)
    let host = check::host_need(cfg, lay.numel, dist.world, compute.gpu_name().is_some());
    let need = if leader { host.rank0 } else { host.other_ranks };
    crate::model::host_memory::check_fits(need, crate::model::host_memory::bound()).map_err(unrecoverable)?;
    let Start { mut params, opt, saved, init_from: init_source } =
        starting_state(cfg, opts, (&mc, &lay), &config_toml, (&ds, dist.rank, dist.world))?;
    dist.agree_on_start(saved.as_ref(), opts.resume.as_deref())?;
    if let Some(s) = saved.as_ref().filter(|s| s.step >= cfg.run.steps) {
        console!("the run is at step {} (run.steps = {}): nothing to train", s.step, cfg.run.steps);
        return summary.nothing_to_train(s, opts.resume.clone());
    }
    let lo = loader_options(cfg, dist.rank, dist.world);
    // a saved position this config cannot continue (another seed, batch or dataset) stays refused
    let loader =
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
    let (opt, updater) = Updater::place(cfg, sharded, lay.numel, opt, &mut compute, &mut dist)?;
    let (ema, ema_sharded) = ema::start(cfg, opts.resume.as_deref(), (&mc, &lay), &params, &dist, &mut compute)?;
    // (a tokenizer file that does not read is found again by a restart)
    let preview = if leader { Some(Preview::new(cfg, &mc, &ds).map_err(unrecoverable)?) } else { None };
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
    // (where its history forks: a rewind, a branch; a diverged start's records set aside)
    if leader && resumed {
        start_state::record_resume(run, &mut state, opts.resume.as_deref(), named.as_deref())?;
    }
    if leader && !resumed {
        start_state::set_aside_a_diverged_start(run)?;
    }
    // (before config.toml is this session's: it compares with the last session's)
    // (a dataset mended on purpose, `--accept-data-change`: other samples from here on)
    let same_settings_since = match resumed && !opts.accept_data_change {
        true => divergence::same_settings_since(cfg, &config_toml, state.step, dist.world),
        false => 0,
    };
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
    // (a log deleted, not a branch's new folder: those have no checkpoint of their own yet)
    if leader && resumed && !run.join("metrics.jsonl").is_file() && !checkpoint::complete(run).is_empty() {
        tracing::warn!(
            "{} is missing, though this run folder trained to step {}: the log of those steps is gone, and it \
             starts again at step {} (loss curves and `infinity scaling` read the steps from there)",
            run.join("metrics.jsonl").display(),
            state.step,
            state.step + 1
        );
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
        summary.resumed(&state, opts.resume.clone(), same_settings_since)?;
    }
    let keep = (cfg.checkpoint.keep_last, cfg.checkpoint.keep_every);
    // (the summary on disk now: the one a stop rewrites while its checkpoint is being written)
    let saver = match summary.text_at(&state)? {
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
    summary.start_clock();
    let state_step = state.step;
    let watchdog = watchdog::Watchdog::start(cfg.run.stall_timeout_s, (dist.rank, dist.world), cfg.dist.timeout_s)
        .map_err(setup::unrecoverable)?;
    let mut t = Trainer {
        watchdog,
        saver,
        logger,
        preview,
        validator,
        grads: updater.host_grads(&lay),
        acts: Acts::default(),
        ropes: HashMap::new(),
        ema,
        updater,
        opt,
        params,
        state,
        loader,
        lock,
        summary,
        clock: saver::CheckpointClock::new(cfg.checkpoint.every_minutes),
        dist,
        compute,
        cfg,
        ds,
        mc,
        lay,
        costs,
        micro_batch,
        accum,
        peak_tflops,
        schedule: cfg.schedule(),
        spike_limits,
        sharded,
        ema_sharded,
        stop: opts.stop.clone(),
        stop_after: opts.stop_after,
        first_step: state_step,
    };
    while t.state.step < cfg.run.steps {
        let stepped = t.step()?;
        t.count(&stepped);
        t.check_run_folder()?;
        t.log(&stepped)?;
        if stepped.diverged {
            // (a streak the run's last step ends in, shorter than the limit: its weights, those before the
            // streak, are checkpointed as a run's end checkpoints them, for the user to judge)
            if t.state.nonfinite_run < cfg.optim.max_nonfinite {
                t.checkpoint_if_due()?;
            }
            return Err(t.diverged());
        }
        t.validate_if_due()?;
        if t.checkpoint_if_due()? {
            break;
        }
    }
    t.finish()
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
