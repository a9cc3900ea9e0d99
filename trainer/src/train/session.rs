//! A training session's start, before any training state is read: the dataset and the model it
//! implies opened, the device and the group joined, the ranks agreed on one config and one
//! micro-batch, the step checked against the GPU's memory, the run folder made and locked (rank 0),
//! and the lines that say what will train.

use std::sync::Arc;

use anyhow::{Context, Result};
use infinity_data::{Checksums, Dataset};

use super::config::TrainConfig;
use super::dist::Dist;
use super::run_lock::RunLock;
use super::setup::{self, agree_on_micro_batch, micro_steps, unrecoverable, Setup};
use super::stop::SetupGuard;
use super::summary::SummaryFile;
use super::token_mix::TokenMix;
use super::{compute, gpu_fit, mfu, rank_identity, rundir, TrainOptions};
use crate::model::memory::{gib, RUNTIME_MARGIN};
use crate::model::{Layout, ModelConfig};

/// How long a restarted group's or a resume's rank 0 waits for the run folder's lock (seconds).
const RESTART_LOCK_PATIENCE_S: u64 = 120;

/// What a session trains with, once every rank has agreed on it.
pub(super) struct Session<'a> {
    pub(super) ds: Arc<Dataset>,
    pub(super) mc: ModelConfig,
    pub(super) lay: Layout,
    pub(super) mix: TokenMix,
    pub(super) compute: compute::Compute,
    pub(super) dist: Dist,
    /// The config as the run folder records it (paths absolute: read from other folders too).
    pub(super) config_toml: String,
    /// Samples per micro-batch (chosen from the GPU's memory under `data.micro_batch = "auto"`), and
    /// micro-batches per rank and step.
    pub(super) micro_batch: usize,
    pub(super) accum: usize,
    /// The device's peak dense TFLOP/s that MFU is counted against (none: unknown).
    pub(super) peak_tflops: Option<f64>,
    pub(super) summary: SummaryFile<'a>,
    /// Rank 0's lock on the run folder, held as long as the session (one job per run folder).
    pub(super) lock: Option<RunLock>,
}

impl<'a> Session<'a> {
    pub(super) fn start(cfg: &'a TrainConfig, opts: &TrainOptions, setup: &SetupGuard) -> Result<Session<'a>> {
        // (the executable's checksum, which the ranks compare, while setup runs)
        rank_identity::prefetch();
        let env = infinity_launcher::env::DistEnv::from_env().ok().flatten();
        let Setup { ds, mc, lay, mix } = Setup::open_with(cfg, checksums(env.as_ref())).map_err(unrecoverable)?;
        let unlisted = setup::unlisted_warning(cfg, &ds)?;
        let ds = Arc::new(ds);
        let manifest = &ds.manifest;
        // the device before the group: with dist.backend = "auto" the ranks choose NCCL when all are GPUs
        let world = env.as_ref().map_or(1, |e| e.world);
        let compute = compute::Compute::open_deferred(&cfg.run, cfg.dist.zero1 && world > 1, &mc, &lay)?;
        // (what of run.dir this job makes: no rank makes any of it before the group has formed)
        let absent = infinity_data::file_lock::missing_folders(&cfg.run.dir);
        let mut dist = Dist::join(&cfg.dist, compute.gpu_name().is_some(), setup)?;
        slow_setup_drill();
        // the first collective: every later one assumes the ranks train one config
        // (paths absolute: the run folder records where its data are, wherever it is read from)
        let config_toml = toml::to_string(&cfg.with_absolute_paths()).context("serialising the config")?;
        let fingerprint = |d: &std::path::Path| match infinity_data::Manifest::load(d) {
            Ok(v) => v.fingerprint(),
            Err(_) => "unreadable".into(), // named by the validator below
        };
        // (and each of `val.sets`, whose folders may differ per node too)
        let val_fingerprint =
            cfg.val.dir.is_some().then(|| cfg.val.dirs().map(|(_, d)| fingerprint(d)).collect::<Vec<_>>().join(" + "));
        if super::stop::fault_due(dist.rank, 0, dist.attempt) {
            // (a rank lost as the group forms: its connections close first, as a dropped link's do, so the
            // others fail in the config agreement before the launcher sees this rank killed)
            let (rank, attempt) = (dist.rank, dist.attempt);
            drop(dist);
            std::thread::sleep(std::time::Duration::from_secs(1));
            super::stop::fault_drill(rank, 0, attempt);
            unreachable!("the fault drill kills this rank");
        }
        dist.agree_on_config(&config_toml, (&manifest.fingerprint(), val_fingerprint.as_deref()))?;
        if let Some(note) = compute.precision_note(&cfg.run) {
            console!("{note}");
        }
        let micro_batch = agree_on_micro_batch(cfg, (&mc, &lay), manifest, &compute, &mut dist)?;
        if let Some(total) = compute.gpu_total_memory().filter(|_| cfg.run.gpu_memory_check) {
            // a step that exceeds the GPU would run out of memory at its first step, and again after
            // every restart: stop now, naming what fits
            let step = gpu_fit::gpu_step(cfg, &mc, manifest, dist.world, micro_batch)?;
            let line = match gpu_fit::fits(&mc, &lay, &step, total, RUNTIME_MARGIN) {
                Ok(line) => line,
                Err(_) => {
                    let line = gpu_fit::fits(&mc, &lay, &step, total, 0)?;
                    let margin = gib(RUNTIME_MARGIN);
                    tracing::warn!("the step leaves under {margin} of the GPU for the CUDA context and libraries");
                    line
                }
            };
            if dist.is_leader() {
                console!("{line}");
            }
        }
        let accum = micro_steps(cfg, dist.world, micro_batch)?;
        let leader = dist.is_leader();
        if let Some(w) = unlisted.filter(|_| leader) {
            tracing::warn!("{w}");
        }
        // MFU against the leader's device (its GPU's datasheet peak under "auto"; none on the CPU)
        let (peak_tflops, peak_line) = mfu::resolve_peak(cfg.run.peak_tflops, compute.gpu_name(), cfg.run.precision);
        if let Some(line) = peak_line.filter(|_| leader) {
            console!("{line}");
        }
        let run = &cfg.run.dir;
        // (a restart would meet it again: exit 2, as --check says)
        std::fs::create_dir_all(run)
            .with_context(|| format!("run.dir {} cannot be created (not writable?)", run.display()))
            .map_err(unrecoverable)?;
        // one job per run folder (released however this process ends)
        // a restarted group's rank 0, or a requeued job's resume, may meet the lost attempt's (its node
        // lost, it got SIGTERM) still writing its stop's checkpoint: it waits for that, and another
        // restart is the remedy for a longer write
        let resuming = dist.attempt > 0 || opts.resume.is_some() || opts.resume_auto;
        let patience = lock_patience(resuming, dist.world, cfg.dist.timeout_s);
        let mut lock = match leader.then(|| RunLock::acquire_within(run, patience)).transpose() {
            Err(e) if dist.attempt > 0 => return Err(e),
            other => other.map_err(unrecoverable)?,
        };
        if let Some(l) = lock.as_mut() {
            // (what of run.dir this job made goes again, under the lock, if setup ends without training)
            l.made_here(absent.clone());
            setup.made_run_dir(absent);
        }
        if leader && opts.fresh_start {
            // the command line checked before the lock: a fresh start into the same folder may have trained
            // and released it since, and would be overwritten
            rundir::check_fresh(run).map_err(unrecoverable)?;
        }
        let summary = SummaryFile::new(run, cfg, dist.world, leader);
        if let Some(base) = cfg.model.mup() {
            console!("{}", base.describe(&mc, &lay));
        }
        console!(
            "model: {} parameters ({:.2} M), {} × {} of {} per step",
            lay.numel,
            lay.numel as f64 / 1e6,
            crate::cli::plural(dist.world, "rank"),
            crate::cli::plural(accum, "micro-step"),
            micro_batch
        );
        console!(
            "tokens per step ≈ {:.0}, training FLOPs per step ≈ {:.3e}",
            mix.mean_tokens * cfg.data.global_batch as f64,
            mix.mean_flops * cfg.data.global_batch as f64
        );
        if let Some(line) = mix.mix_line(cfg, &ds) {
            console!("{line}");
        }
        if let Some(w) = mix.undrawn_warning(cfg.data.global_batch, ds.num_rows()) {
            console!("warning: {w}");
        }
        Ok(Session { ds, mc, lay, mix, compute, dist, config_toml, micro_batch, accum, peak_tflops, summary, lock })
    }
}

/// How long rank 0 waits for the run folder's lock: a resume or restart up to
/// [`RESTART_LOCK_PATIENCE_S`], but in a group under half of `dist.timeout_s`, which the other ranks
/// wait for it at their next collective: rank 0 gives up first and names the lock's holder, rather than
/// the others' collective timeout naming rank 0.
fn lock_patience(resuming: bool, world: usize, timeout_s: f64) -> std::time::Duration {
    let patience = if resuming { RESTART_LOCK_PATIENCE_S as f64 } else { 1.0 };
    let patience = if world > 1 { patience.min(timeout_s / 2.0) } else { patience };
    std::time::Duration::from_secs_f64(patience.max(1.0))
}

/// Which shards a rank hashes as it opens the dataset. Under `infinity launch`, a node's ranks share out
/// its copy of the data (`data.dir` may differ per node, and each copy is hashed once); the rank whose
/// share holds a damaged shard exits 65 naming it, and its agent stops the group at once. Without the
/// agent (ranks a scheduler started) nothing stops the others, which would wait in the rendezvous for
/// the failed rank: each hashes every shard and fails alike.
fn checksums(env: Option<&infinity_launcher::env::DistEnv>) -> Checksums {
    match env {
        Some(e) if e.agent_store => Checksums::Share { rank: e.local_rank, world: e.local_world },
        _ => Checksums::Verify,
    }
}

/// Slow-setup drill: `INFINITY_FAULT_SLOW_SETUP=SECONDS` sleeps so long once the group has formed, as
/// loading a large checkpoint would (a stop signal meanwhile ends the process, or the group together:
/// [`SetupGuard`]).
fn slow_setup_drill() {
    if let Some(secs) = std::env::var("INFINITY_FAULT_SLOW_SETUP").ok().and_then(|s| s.parse::<f64>().ok()) {
        tracing::warn!("fault drill: setup sleeps {secs} s");
        std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.0)));
    }
}

#[cfg(test)]
mod tests {
    use super::lock_patience;

    #[test]
    fn a_group_waits_for_the_lock_under_half_its_collective_timeout() {
        let secs = |resuming, world, timeout_s| lock_patience(resuming, world, timeout_s).as_secs_f64();
        assert_eq!(secs(true, 1, 60.0), 120.0);
        assert_eq!(secs(true, 4, 300.0), 120.0);
        assert_eq!(secs(true, 4, 60.0), 30.0);
        assert_eq!(secs(true, 4, 1.0), 1.0);
        assert_eq!(secs(false, 4, 300.0), 1.0);
    }
}
