//! `infinity sweep SWEEP.toml [--print | --slurm FILE | --dry-run]` and `infinity scaling RUNS_DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::train::config::DeviceChoice;
use crate::{scaling, sweep};

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (see docs/scaling.md).
    file: PathBuf,
    /// Only print the plan (runs, parameters, tokens, FLOPs), with the checks a real run makes before
    /// writing anything (exits non-zero where it would refuse; runs on CUDA that this build lacks are
    /// only warned of: the plan may be for another build).
    #[arg(long, conflicts_with_all = ["print", "slurm"])]
    dry_run: bool,
    /// Print one `infinity launch`/`train` command line per unfinished run instead of running.
    #[arg(long, conflicts_with = "slurm")]
    print: bool,
    /// Write a SLURM job-array script (one task per unfinished run) instead of running.
    #[arg(long, value_name = "FILE")]
    slurm: Option<PathBuf>,
    /// Train up to this many runs at once here, each on its own GPUs (`nproc_per_node` of them, in
    /// `CUDA_VISIBLE_DEVICES`) and an equal share of the CPU threads: small models of a scaling sweep,
    /// one to a GPU.
    #[arg(short = 'j', long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..), conflicts_with_all = ["print", "slurm"])]
    parallel: u16,
    /// Print where each run stands (finished, training, diverged, failed, stopped, interrupted, not
    /// started; `[stale]`: trained with other settings or data than the file gives now; its step, loss,
    /// validation loss and newest checkpoint), read from the run folders, and exit.
    #[arg(long, conflicts_with_all = ["dry_run", "print", "slurm", "parallel", "devices"])]
    status: bool,
    /// The GPUs the runs share out with --parallel (default: CUDA_VISIBLE_DEVICES, else 0, 1, 2, …).
    #[arg(long, value_delimiter = ',', value_name = "IDS", conflicts_with_all = ["print", "slurm"])]
    devices: Option<Vec<String>>,
}

/// What a plan leaves to train where some of its runs have begun (finished, diverged, training in another
/// job, or stopped with a checkpoint to resume from): `already: 4 finished, 1 resumes from a checkpoint;
/// left to train here: 2 runs of 1.234e11 FLOPs in all` (their whole runs', the steps a resume skips
/// included); none where no run has begun.
fn left_to_train(runs: &[sweep::PlannedRun]) -> Option<String> {
    use sweep::RunState;
    let states: Vec<RunState> = runs.iter().map(|r| sweep::state(&r.dir)).collect();
    let count = |s: RunState| states.iter().filter(|&&x| x == s).count();
    let todo: Vec<&sweep::PlannedRun> =
        runs.iter().zip(&states).filter(|(_, s)| **s == RunState::ToDo).map(|(r, _)| r).collect();
    let resumes = todo.iter().filter(|r| crate::train::latest_checkpoint(&r.dir).is_some()).count();
    let begun = [
        (count(RunState::Finished), "finished"),
        (count(RunState::Diverged), "diverged"),
        (count(RunState::Training), "training now"),
        (resumes, if resumes == 1 { "resumes from a checkpoint" } else { "resume from checkpoints" }),
    ];
    let said: Vec<String> = begun.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
    if said.is_empty() {
        return None;
    }
    let compute = todo.iter().fold(0.0, |sum, r| sum + r.compute);
    let left = match todo.len() {
        0 => "nothing left to train here".to_string(),
        n => format!("left to train here: {} of {compute:.3e} FLOPs in all", super::plural(n, "run")),
    };
    Some(format!("already: {}; {left}", said.join(", ")))
}

pub fn run_sweep(a: SweepArgs) -> Result<ExitCode> {
    // (--status needs no validation set: it reads what the runs logged)
    let sweep::Plan { sweep: file, out, runs, warnings, out_warnings, env } = sweep::plan_with(&a.file, !a.status)?;
    if a.status {
        console_text!("{}", sweep::status_table(&runs));
        console_text!("run folders: {}/NAME\n", out.display());
        for w in &out_warnings {
            console_err!("warning: {w}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // each run still to train here would start and fail at once: refused; a SLURM script, which names this
    // binary, says so; a plan (--dry-run) and --print leave the runs to another build
    let on_cuda = |r: &&sweep::PlannedRun| r.config.run.device == DeviceChoice::Cuda && sweep::skipped(r).is_none();
    if let Some(r) = runs.iter().find(on_cuda).filter(|_| !cfg!(feature = "cuda") && !a.print) {
        let why = format!(
            "run {}: run.device = \"cuda\", and this build has no CUDA support: build with --features cuda (or set \
             run.device = \"auto\" or \"cpu\")",
            r.name
        );
        match (a.slurm.is_some(), a.dry_run) {
            (true, _) => console_err!("warning: {why}; the script runs this binary"),
            // (a plan may be for GPU nodes and another build: said, not refused)
            (false, true) => console_err!("warning: {why}; `infinity sweep` without --dry-run refuses it"),
            (false, false) => bail!("{why}"),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slots = sweep::Slots::new(a.parallel as usize, file.nproc_per_node, a.devices.clone(), cores, &runs)?;
    // with --print, stdout is the command lines alone (for a scheduler to read)
    if a.print {
        eprint!("{}", sweep::table(&runs, &out));
    } else {
        console_text!("{}", sweep::table(&runs, &out));
    }
    for v in &env {
        console_err!("environment: {v} (the runs the sweep starts do not see it again)");
    }
    for w in out_warnings.iter().chain(&warnings) {
        console_err!("warning: {w}");
    }
    if a.dry_run {
        // what the real run refuses before writing (settings changed for runs that have trained)
        sweep::check_configs(&runs)?;
        if let Some(line) = left_to_train(&runs) {
            console!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    sweep::write_configs(&runs)?;
    let exe = std::env::current_exe().context("locating the infinity binary")?;
    if a.print || a.slurm.is_some() {
        let mut todo: Vec<sweep::PlannedRun> = Vec::new();
        let mut finished = 0;
        for r in &runs {
            match sweep::skipped(r) {
                None => todo.push(r.clone()),
                Some(_) if sweep::state(&r.dir) == sweep::RunState::Finished => finished += 1,
                Some(why) => console_err!("{why}"),
            }
        }
        if todo.is_empty() {
            match finished == runs.len() {
                true => console_err!("the sweep's {} finished: nothing to submit", super::plural(runs.len(), "run")),
                false => console_err!(
                    "nothing to submit: {finished} of the sweep's {} finished, the others diverged or are training \
                     now (named above)",
                    super::plural(runs.len(), "run")
                ),
            }
            return Ok(ExitCode::SUCCESS);
        }
        if a.print {
            // the commands run in the caller's environment: keep its INF__ variables off them too
            let unset: Vec<String> =
                sweep::env_overrides().into_iter().flat_map(|(v, _)| ["-u".to_string(), v]).collect();
            let prefix = match unset.is_empty() {
                true => String::new(),
                false => format!("env {} ", unset.iter().map(|w| sweep::sh_quote(w)).collect::<Vec<_>>().join(" ")),
            };
            for r in &todo {
                let words: Vec<String> =
                    sweep::command(r, file.nproc_per_node).iter().map(|w| sweep::sh_quote(w)).collect();
                console_data!("{prefix}{} {}", sweep::sh_quote(&exe.display().to_string()), words.join(" "));
            }
            return Ok(ExitCode::SUCCESS);
        }
        let path = a.slurm.as_ref().expect("--slurm");
        if let Some(w) = sweep::slurm_cpus_warning(&file) {
            console_err!("warning: {w}");
        }
        let script = sweep::slurm_script(&file, &todo, &exe.display().to_string())?;
        std::fs::write(path, script).with_context(|| format!("writing {}", path.display()))?;
        let shown = path.display().to_string();
        let tasks = crate::cli::plural(todo.len(), "array task");
        console!("wrote {shown} ({tasks}): sbatch {}", sweep::sh_quote(&shown));
        return Ok(ExitCode::SUCCESS);
    }
    let done = sweep::run_local(&runs, file.nproc_per_node, &exe, &slots)?;
    if !done.diverged.is_empty() {
        console!(
            "{} diverged (final results, skipped by later sweeps; `infinity scaling` lists them): {}",
            super::plural(done.diverged.len(), "run"),
            done.diverged.join(", ")
        );
    }
    if !done.training_elsewhere.is_empty() {
        console!(
            "{} {} training in other jobs (left to them; run the sweep again once they end): {}",
            super::plural(done.training_elsewhere.len(), "run"),
            if done.training_elsewhere.len() == 1 { "is" } else { "are" },
            done.training_elsewhere.join(", ")
        );
    }
    if !done.failed.is_empty() {
        console!("{} of {} failed: {}", done.failed.len(), super::plural(runs.len(), "run"), done.failed.join(", "));
    }
    if !done.stopped.is_empty() || done.signalled {
        let at = match done.stopped.is_empty() {
            true => "between two runs".to_string(),
            false => format!("at {}", done.stopped.join(", ")),
        };
        console!("sweep stopped by a signal {at}: run the sweep again to continue");
        // (128 + SIGTERM, as the signal's default action would have exited: not done, not failed)
        return Ok(ExitCode::from(143));
    }
    if done.failed.is_empty() {
        let elsewhere = done.training_elsewhere.len();
        match elsewhere {
            0 => console!("sweep done: {} in {}", super::plural(runs.len(), "run"), out.display()),
            n => console!(
                "sweep done here: {} of {} in {}; {n} left to other jobs",
                runs.len() - n,
                super::plural(runs.len(), "run"),
                out.display()
            ),
        }
        Ok(ExitCode::SUCCESS)
    } else {
        console!("run the sweep again to retry them (finished and diverged runs are skipped)");
        Ok(ExitCode::FAILURE)
    }
}

#[derive(Args, Debug)]
pub struct ScalingArgs {
    /// Folders of run folders (a sweep's `out`): with several, their runs are analysed together (a
    /// probe and the sweep it led to, the sizes an IsoFLOP profile asked for), each named after its
    /// folder too (`probe/w64`).
    #[arg(required = true, value_name = "RUNS")]
    runs: Vec<PathBuf>,
    /// Where the table, fits and figures go (default RUNS/scaling; needed with several RUNS).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Training budgets in FLOPs (e.g. `1e20,1e21`): the loss each fit predicts there, and the
    /// compute-optimal parameters and tokens from L(N, D), with the nearest preset, and from the
    /// IsoFLOP profiles' N_opt and D_opt laws.
    #[arg(long, value_delimiter = ',', value_parser = positive_flops)]
    budget: Vec<f64>,
    /// Fit the loss of this validation set (one of the runs' `[[val.sets]]`, by name: `val.jsonl`'s
    /// `sets.NAME`) in place of `val.dir`'s: the scaling of one domain of a mix; where a run's
    /// `val.jsonl` has none, its `eval.jsonl`'s (`infinity eval RUN --val DIR --name NAME --out
    /// RUN/eval.jsonl`). Runs without it are left out. The analysis goes into RUNS/scaling-NAME (with one RUNS and no --out).
    #[arg(long, value_name = "NAME", value_parser = set_name)]
    val_set: Option<String>,
    /// N as the fits take it: every parameter (Hoffmann et al.), or those outside the embeddings
    /// (Kaplan et al.: `word_embed`, `class_emb`, `cfg_uncond`, `lvl_embed`, `pos_start` left out),
    /// the budgets' N* and nearest preset counted alike. Non-embedding goes into
    /// RUNS/scaling-non-embedding (with one RUNS and no --out).
    #[arg(long, value_enum, default_value_t = scaling::Parameters::Total)]
    parameters: scaling::Parameters,
}

/// A validation set's name as `val.sets` allows it (a TensorBoard tag's part).
pub(crate) fn set_name(s: &str) -> Result<String, String> {
    match !s.is_empty() && s.chars().all(crate::tensorboard::tag_char) {
        true => Ok(s.to_string()),
        false => Err(format!("expected a val.sets name (letters, digits, `.`, `_`, `-`), found {s:?}")),
    }
}

fn positive_flops(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number of FLOPs such as 1e21, found {s:?}")),
    }
}

pub fn run_scaling(a: ScalingArgs) -> Result<ExitCode> {
    let out = match (a.out, a.runs.as_slice()) {
        (Some(out), _) => out,
        // (a validation set's analysis, or one of other N, beside the plain one, not over it)
        (None, [one]) => {
            let set = a.val_set.as_ref().map_or(String::new(), |n| format!("-{n}"));
            let n = if a.parameters == scaling::Parameters::NonEmbedding { "-non-embedding" } else { "" };
            one.join(format!("scaling{set}{n}"))
        }
        (None, _) => bail!(
            "{} folders of runs: say where their analysis goes with --out (it goes into RUNS/scaling with one)",
            a.runs.len()
        ),
    };
    let measure = scaling::Measure { at_computes: &a.budget, val_set: a.val_set.as_deref(), parameters: a.parameters };
    let r = scaling::analyse_with(&a.runs, &out, &measure)?;
    let fitted: usize = r.points.iter().map(|p| p.n()).sum();
    console!(
        "{} read, {fitted} fitted as {} (one per distinct config; repeats averaged); losses in nats per bit",
        super::plural(r.runs.len(), "run"),
        super::plural(r.points.len(), "point")
    );
    console!(
        "Pearson r of ln(loss) vs ln(compute): all fitted points {}; compute frontier {}",
        scaling::pearson_text(r.pearson.all.0, r.pearson.all.1),
        scaling::pearson_text(r.pearson.frontier.0, r.pearson.frontier.1)
    );
    for f in [&r.power, &r.power_floor, &r.chinchilla].into_iter().flatten() {
        let coefs: Vec<String> = f
            .coefs
            .iter()
            .map(|c| {
                let ci = c.ci95.map_or(String::new(), |(lo, hi)| {
                    format!(" [{}, {}]", scaling::coef_text(lo), scaling::coef_text(hi))
                });
                format!("{} = {}{ci}", c.name, scaling::coef_text(c.value))
            })
            .collect();
        let runs = if f.runs > f.n { format!(", from {} runs", f.runs) } else { String::new() };
        console!("{} ({} points{runs}): {}", f.formula, f.n, coefs.join(", "));
    }
    console_text!("{}", scaling::budgets_markdown(&r.budgets));
    console_text!("{}", scaling::isoflop_markdown(&r.isoflop));
    for n in &r.notes {
        console!("note: {n}");
    }
    for w in &r.warnings {
        console!("warning: {w}");
    }
    for f in &r.files {
        console!("wrote {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}
