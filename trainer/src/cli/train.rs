//! `infinity train CONFIG.toml [--set key.path=value …] [--resume auto|PATH]`.
//!
//! Joins a data-parallel group when the environment describes one (`infinity launch`, torchrun-style
//! variables, SLURM). SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 make every rank checkpoint at the same step and exit 0
//! (or `--preempted-exit-code`, outside `infinity launch`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use infinity_data::DataError;
use infinity_launcher::comm::{CommError, EXIT_COMM_TIMEOUT};
use infinity_launcher::env::vars;

use super::Permanent;
use crate::train::config::{self, TrainConfig};
use crate::train::{self, dist, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML config (see configs/).
    config: PathBuf,
    /// Override a config value, e.g. `--set optim.lr=3e-4` (repeatable; wins over INF__… variables).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// `auto` continues from the newest complete checkpoint of run.dir (if any); or a checkpoint folder,
    /// or another run folder (its newest complete checkpoint).
    /// Default: a fresh start, which refuses a run.dir that holds a run. A group the launcher restarts
    /// continues from run.dir's newest checkpoint.
    #[arg(long)]
    resume: Option<String>,
    /// Resume on a dataset that changed since the checkpoint (a shard mended after a bad row stopped the
    /// run), from the saved position: the same order where every bucket holds the same rows, the new
    /// dataset's order for the rest of the epoch otherwise. `d` and the schedules must not change.
    #[arg(long, requires = "resume")]
    accept_data_change: bool,
    /// Check everything a run checks before its first step (config, dataset checksums, model, batch
    /// split, validation data, device, the weights it starts from), print the run's size, and exit
    /// without training or writing (0, or the code the run would fail with).
    #[arg(long)]
    check: bool,
    /// The number of ranks `--check` splits the batch for, and `--rows-of-step` lists the rows of
    /// (default: the environment's world size, else 1).
    #[arg(long, value_parser = super::positive())]
    world: Option<usize>,
    /// Print the rows step N draws (counted from 1, as metrics.jsonl counts), rank by rank: each one's
    /// shard, row and sample id; and exit. A loss spike that comes back at one step after a resume
    /// points at them. A run folder with a checkpoint lends its record of earlier global batch sizes.
    #[arg(long, value_name = "N", conflicts_with_all = ["check", "resume"])]
    rows_of_step: Option<u64>,
    /// `--check` a GPU run against a GPU of this many GiB instead of this machine's (say, on a login
    /// node without one): the memory per rank, whether the micro-batch fits, what "auto" takes.
    #[arg(long, value_name = "GIB", requires = "check")]
    gpu_gib: Option<f64>,
    /// Exit with this code (0-255) when a signal stops the run before its last step (its checkpoint
    /// written), instead of 0: 143 lets a Kubernetes Job's podFailurePolicy or a PyTorchJob's restart
    /// policy retry the preempted pods. Ignored under `infinity launch`, whose agent reports the stop.
    #[arg(long, value_name = "CODE", default_value_t = 0)]
    preempted_exit_code: u8,
    /// Stop as a signal stops the run (a checkpoint after the step, then exit with
    /// `--preempted-exit-code`) once this long has passed, in sbatch's `--time` formats (`MM`,
    /// `HH:MM:SS`, `D-HH:MM:SS`): for a job whose scheduler ends it without a warning signal. Leave a
    /// step and the checkpoint inside the job's limit. Under `infinity launch`, give it to the launcher.
    #[arg(long, value_name = "TIME", value_parser = infinity_launcher::time_limit())]
    time_limit: Option<u64>,
}

pub fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let bad = |e: anyhow::Error| anyhow::Error::from(Permanent::Invocation(e));
    let cfg = TrainConfig::load(&a.config, &a.set).map_err(bad)?;
    // the ranks this run splits its batch over (torchrun-style variables or SLURM's, as `Dist::join`
    // reads them): variables that contradict each other are wrong at every restart
    let env = infinity_launcher::env::DistEnv::from_env().map_err(bad)?;
    // a setting taken from the environment is said once (it is easily left set from an earlier job);
    // not one a --set replaced (of its key, or its other spelling: `optim.lr` for `optim.lr_per_256`)
    let taken = config::vars_taken(&a.config, &a.set).map_err(bad)?;
    let from_env: Vec<String> = taken.iter().map(|(key, v)| format!("{key} = {v}")).collect();
    if !from_env.is_empty() && env.as_ref().is_none_or(|e| e.rank == 0) {
        console!("from the environment: {}", from_env.join(", "));
    }
    // (a variable meant for the config, misspelled: a job spec's typo would change nothing unseen)
    for var in std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()) {
        let near = var.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("INF_")) && config::inf_var_key(&var).is_none();
        if near && env.as_ref().is_none_or(|e| e.rank == 0) {
            console_err!(
                "warning: {var} in the environment is not read: the config's variables start with INF__ and part \
                 keys with __ (INF__OPTIM__LR sets optim.lr)"
            );
        }
    }
    let under_agent = std::env::var(vars::UNDER_AGENT).is_ok_and(|v| v == "1");
    if under_agent && a.preempted_exit_code != 0 && env.as_ref().is_none_or(|e| e.rank == 0) {
        console!("{}", launch_ignores(a.preempted_exit_code));
    }
    // (a rank stopping on its own clock leaves its group with no signal to the agent, which restarts
    // the group: the agent's clock stops every rank at once)
    if under_agent && a.time_limit.is_some() {
        return Err(bad(anyhow::anyhow!(
            "--time-limit of `infinity train` under infinity launch: give it to `infinity launch` (before `--`), \
             whose agent stops every rank at once"
        )));
    }
    if a.world.is_some() && !a.check && a.rows_of_step.is_none() {
        return Err(bad(anyhow::anyhow!("--world goes with --check or --rows-of-step")));
    }
    let world = a.world.or(env.as_ref().map(|e| e.world)).unwrap_or(1).max(1);
    // (nothing communicates or computes: no backend or batch split to check)
    if let Some(step) = a.rows_of_step {
        let lines = train::step_rows::rows_of_step(&cfg, step, world).map_err(bad)?;
        lines.iter().for_each(|l| console!("{l}"));
        return Ok(ExitCode::SUCCESS);
    }
    if world > 1 {
        dist::backend_available(&cfg.dist).map_err(bad)?;
    }
    // a batch that does not split over the ranks is a config error (no restart would help)
    // ("auto" is chosen at start, from the GPU's memory)
    train::micro_steps(&cfg, world, cfg.data.micro_batch.samples().unwrap_or(1)).map_err(bad)?;
    // (and over every world an elastic group may regroup to: found now, not when a node joins hours on)
    if let Some((range, worlds)) = infinity_launcher::env::elastic_worlds().filter(|_| under_agent) {
        let micro = cfg.data.micro_batch.samples();
        for w in worlds.into_iter().filter(|&w| w != world) {
            train::micro_steps(&cfg, w, micro.unwrap_or(1)).map_err(|e| {
                // ("auto" chooses each world's micro-batch: the ranks alone must split the batch)
                let e = match micro {
                    Some(_) => e.to_string(),
                    None => format!("data.global_batch {} must split into {w} ranks", cfg.data.global_batch),
                };
                bad(anyhow::anyhow!(
                    "{e}: a world of {w} ranks is one the elastic group (--nnodes {range}) may regroup to when a \
                     node joins or leaves, and it would stop there; give a global batch every world of the range \
                     splits, or narrow --nnodes"
                ))
            })?;
        }
    }
    // a group the launcher restarts (INFINITY_RESUME=auto; torchrun's TORCHELASTIC_RESTART_COUNT above
    // 0) continues from run.dir's newest checkpoint, whatever --resume named for its first attempt (that
    // one, until run.dir has a checkpoint of its own)
    let restarted_group = match env.as_ref() {
        Some(e) => e.restarted(),
        None => infinity_launcher::env::restart_attempt().map_err(bad)? > 0, // (a group of one)
    };
    let restarted = std::env::var(vars::RESUME).is_ok_and(|v| v == "auto") || restarted_group;
    // (as a run's start chooses: a rewind cut short since the newest checkpoint is finished from its step)
    let newest = || match train::checkpoint::interrupted_rewind(&cfg.run.dir) {
        Some((step, _)) => Some(train::checkpoint::step_dir(&cfg.run.dir, step)),
        None => train::latest_checkpoint(&cfg.run.dir),
    };
    let fresh_start = a.resume.is_none() && !restarted;
    let resume = match a.resume.as_deref() {
        _ if restarted && newest().is_some() => newest(),
        None if restarted => None,
        None => {
            // (checked again under the run's lock: `TrainOptions::fresh_start`; a job training there now is
            // said first: `--resume auto` would only wait for it)
            let held = |e: anyhow::Error| match train::run_lock::check_free(&cfg.run.dir) {
                Err(now) => bad(anyhow::anyhow!("{now:#}; and {e:#}")),
                Ok(()) => bad(e),
            };
            train::rundir::check_fresh(&cfg.run.dir).map_err(held)?;
            None
        }
        Some("auto") => newest(),
        // a requeued rewind whose step keep_last has pruned since: the history it began goes on (as
        // where the step is still there: `resume_point::repeated_rewind`)
        Some(p) => match rewound_before_pruned(&cfg, p) {
            Some(found) => {
                let note = train::resume_point::rewound_before_note(&cfg.run.dir, std::path::Path::new(p), found);
                console_err!("warning: {note}");
                Some(train::checkpoint::step_dir(&cfg.run.dir, found.1))
            }
            // a checkpoint folder, or a run folder's newest complete checkpoint
            None => Some(train::checkpoint::resolve(std::path::Path::new(p)).map_err(|e| bad(auto_hint(p, e)))?),
        },
    };
    let gpu = match a.gpu_gib {
        Some(g) if !(g > 0.0 && g < 1e6) => return Err(bad(anyhow::anyhow!("--gpu-gib {g}: expected a size in GiB"))),
        g => g.map(crate::model::memory::gib_to_bytes),
    };
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = match a.check {
        true => train::check::check_with(&cfg, world, resume.as_deref(), gpu, a.accept_data_change).map(|lines| {
            lines.iter().for_each(|l| console!("{l}"));
            // (--gpu-gib sizes a GPU job from any machine: the job runs a CUDA build, this one may not be)
            let cuda_only = !cfg!(feature = "cuda") && cfg.run.device == train::config::DeviceChoice::Cuda;
            match cuda_only {
                true => console!(
                    "check passed for a build with CUDA support: {} is ready to train with one (this build has \
                     none and would exit 2: `cargo build --release --features cuda`)",
                    a.config.display()
                ),
                false => console!("check passed: {} is ready to train", a.config.display()),
            }
            None
        }),
        false => {
            let flag = train::stop::preemption_flag(true)?;
            train::stop::stop_when_agent_gone(&flag)?;
            if let Some(limit) = a.time_limit {
                time_limit(limit, flag.clone(), timed_out.clone())?;
            }
            let stop = Some(flag);
            let accept_data_change = a.accept_data_change;
            let resume_auto = restarted || a.resume.as_deref() == Some("auto");
            let opts = TrainOptions { resume, stop_after: None, stop, accept_data_change, fresh_start, resume_auto };
            train::train(&cfg, &opts).map(Some)
        }
    };
    let s = match result {
        Ok(None) => return Ok(ExitCode::SUCCESS),
        Ok(Some(s)) => s,
        Err(e) => {
            if let Some(c @ (CommError::Timeout { .. } | CommError::Stalled { .. })) = e.downcast_ref::<CommError>() {
                console_err!("error: {c}; aborting (exit code {EXIT_COMM_TIMEOUT})");
                return Ok(ExitCode::from(EXIT_COMM_TIMEOUT as u8));
            }
            let bad_data = |e: &anyhow::Error| {
                e.chain().any(|c| c.downcast_ref::<DataError>().is_some_and(DataError::is_bad_data))
            };
            if e.chain().any(|c| c.downcast_ref::<train::stop::Diverged>().is_some()) {
                return Err(Permanent::Diverged(e).into());
            }
            // found before the first step: a restart would find it again
            if let Some(u) = e.chain().find_map(|c| c.downcast_ref::<train::Unrecoverable>()) {
                return Err(match bad_data(&u.0) {
                    true => Permanent::Data(e),
                    false => Permanent::Invocation(e),
                }
                .into());
            }
            if bad_data(&e) {
                return Err(Permanent::Data(e).into());
            }

            // a step that cannot fit the GPU fails again after any restart: a config error
            if e.chain().any(|c| c.downcast_ref::<train::gpu_fit::GpuTooSmall>().is_some()) {
                return Err(Permanent::Invocation(e).into());
            }
            return Err(e);
        }
    };
    let checkpoint = match (s.unconfirmed_checkpoint, &s.last_checkpoint) {
        // (another rank, with rank 0 still writing in the background as this one stopped: rank 0's own
        // exit says whether it completed)
        (Some(step), last) => format!(
            "rank 0 was writing the checkpoint of step {step} as this rank stopped (rank 0 says when it is complete; \
             the newest complete one this host saw before it: {})",
            last.as_ref().map_or("none".into(), |p| p.display().to_string())
        ),
        (None, Some(p)) => format!("last checkpoint {}", p.display()),
        (None, None) => "no checkpoint written".into(),
    };
    let what = match (s.preempted, s.steps > s.started_at) {
        (true, _) => {
            let by = match timed_out.load(std::sync::atomic::Ordering::SeqCst) {
                true => "--time-limit",
                false => "a signal",
            };
            format!("stopped by {by} at step {} in {:.1} s", s.steps, s.seconds)
        }
        (false, true) => format!("trained to step {} in {:.1} s", s.steps, s.seconds),
        (false, false) => format!("at step {} already (nothing trained this session)", s.steps),
    };
    // (writes this session lost, which the warnings said as they came: again where the run ends)
    let lost: Vec<String> = [(s.checkpoint_failed_writes, "checkpoint"), (s.tensorboard_failed_writes, "TensorBoard")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{} failed this session", super::plural(n as usize, &format!("{what} write"))))
        .collect();
    let lost = match lost.is_empty() {
        true => String::new(),
        false => format!("; {}", lost.join(", ")),
    };
    console!(
        "{what}: loss {:.4}, bit accuracy {:.2}%, {}; {checkpoint}{lost}",
        s.last_loss,
        100.0 * s.last_bit_acc,
        super::plural(s.skipped_steps as usize, "skipped step"),
    );
    Ok(preempted_exit(s.preempted && s.steps < cfg.run.steps, a.preempted_exit_code))
}

/// [`train::resume_point::rewound_before`] for a `--resume` step folder that is gone (pruned), on the
/// dataset the config names (its shards not hashed: the run does that).
fn rewound_before_pruned(cfg: &train::config::TrainConfig, given: &str) -> Option<(u64, u64)> {
    if std::path::Path::new(given).exists() {
        return None;
    }
    let config_toml = toml::to_string(&cfg.with_absolute_paths()).ok()?;
    let ds = train::Setup::open_with(cfg, infinity_data::Checksums::Skip).ok()?.ds;
    train::resume_point::rewound_before(&cfg.run.dir, std::path::Path::new(given), &config_toml, Some(&ds.manifest))
}

/// `e` with a hint when `--resume` was given a near miss of `auto` (`autoo`, `Auto`) that names no path.
fn auto_hint(given: &str, e: anyhow::Error) -> anyhow::Error {
    let word = !given.contains(std::path::MAIN_SEPARATOR) && !std::path::Path::new(given).exists();
    match word && strsim::levenshtein(&given.to_lowercase(), "auto") <= 2 {
        true => anyhow::anyhow!("{e:#}; did you mean `--resume auto` (run.dir's newest checkpoint)?"),
        false => e,
    }
}

/// `--time-limit`: a thread that raises the stop flag a signal raises after `limit_s` seconds, and
/// `timed_out` with it (for the summary to say what stopped the run).
fn time_limit(
    limit_s: u64,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    timed_out: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    std::thread::Builder::new().name("time limit".into()).spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(limit_s));
        // (this line says the run stops: no "stop requested" after it)
        crate::train::stop::first_to_announce_the_stop();
        console!("--time-limit of {limit_s} s reached: the run stops after this step, as for a signal");
        timed_out.store(true, std::sync::atomic::Ordering::SeqCst);
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    })?;
    Ok(())
}

/// Why `--preempted-exit-code` does nothing for a rank of `infinity launch`, and where it belongs.
fn launch_ignores(code: u8) -> String {
    format!(
        "--preempted-exit-code {code} of `infinity train` is ignored under infinity launch, whose agent reports the \
         stop: give it to `infinity launch` (before `--`), which then exits {code}"
    )
}

/// The exit code of a run a signal stopped before its last step (`stopped_early`): `code`, unless this
/// rank runs under `infinity launch`, whose agent takes any code but 0 for a failure (it reports the
/// stop itself, and tells the ranks from a finished run through the store).
fn preempted_exit(stopped_early: bool, code: u8) -> ExitCode {
    if !stopped_early || code == 0 {
        return ExitCode::SUCCESS;
    }
    if std::env::var(vars::UNDER_AGENT).is_ok_and(|v| v == "1") {
        console!("({}: exiting 0)", launch_ignores(code));
        return ExitCode::SUCCESS;
    }
    console!("exit code {code} (--preempted-exit-code): stopped before the run's last step");
    ExitCode::from(code)
}
