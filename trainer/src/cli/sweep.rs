//! `infinity sweep SWEEP.toml [--print | --slurm FILE | --dry-run]` and `infinity scaling RUNS_DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::{scaling, sweep};

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (see docs/scaling.md).
    file: PathBuf,
    /// Only print the plan (runs, parameters, tokens, FLOPs).
    #[arg(long)]
    dry_run: bool,
    /// Print one `infinity launch`/`train` command line per unfinished run instead of running.
    #[arg(long, conflicts_with = "slurm")]
    print: bool,
    /// Write a SLURM job-array script (one task per unfinished run) instead of running.
    #[arg(long, value_name = "FILE")]
    slurm: Option<PathBuf>,
}

pub fn run_sweep(a: SweepArgs) -> Result<ExitCode> {
    let (file, runs) = sweep::plan(&a.file)?;
    // with --print, stdout is the command lines alone (for a scheduler to read)
    if a.print {
        eprint!("{}", sweep::table(&runs));
    } else {
        console_text!("{}", sweep::table(&runs));
    }
    if a.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    sweep::write_configs(&runs)?;
    let todo: Vec<sweep::PlannedRun> = runs.iter().filter(|r| !sweep::finished(&r.dir)).cloned().collect();
    let exe = std::env::current_exe().context("locating the infinity binary")?;
    if todo.is_empty() && (a.print || a.slurm.is_some()) {
        eprintln!("all {} runs of the sweep have finished: nothing to submit", runs.len());
        return Ok(ExitCode::SUCCESS);
    }
    if a.print {
        for r in &todo {
            let words: Vec<String> =
                sweep::command(r, file.nproc_per_node).iter().map(|w| sweep::sh_quote(w)).collect();
            console!("{} {}", sweep::sh_quote(&exe.display().to_string()), words.join(" "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &a.slurm {
        let script = sweep::slurm_script(&file, &todo, &exe.display().to_string())?;
        std::fs::write(path, script).with_context(|| format!("writing {}", path.display()))?;
        let shown = path.display().to_string();
        console!("wrote {shown} ({} array tasks): sbatch {}", todo.len(), sweep::sh_quote(&shown));
        return Ok(ExitCode::SUCCESS);
    }
    let failed = sweep::run_local(&runs, file.nproc_per_node, &exe)?;
    if failed.is_empty() {
        console!("sweep done: {} runs in {}", runs.len(), file.out.display());
        Ok(ExitCode::SUCCESS)
    } else {
        console!("{} of {} runs failed: {}", failed.len(), runs.len(), failed.join(", "));
        console!("run the sweep again to retry them (finished runs are skipped)");
        Ok(ExitCode::FAILURE)
    }
}

#[derive(Args, Debug)]
pub struct ScalingArgs {
    /// A folder of run folders (a sweep's `out`).
    runs: PathBuf,
    /// Where the table, fits and figures go (default RUNS/scaling).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Training budgets in FLOPs (e.g. `1e20,1e21`): the loss each fit predicts there, and the
    /// compute-optimal parameters and tokens from L(N, D), with the nearest preset.
    #[arg(long, value_delimiter = ',', value_parser = positive_flops)]
    budget: Vec<f64>,
}

fn positive_flops(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number of FLOPs such as 1e21, found {s:?}")),
    }
}

pub fn run_scaling(a: ScalingArgs) -> Result<ExitCode> {
    let out = a.out.unwrap_or_else(|| a.runs.join("scaling"));
    let r = scaling::analyse(&a.runs, &out, &a.budget)?;
    console!("{} runs; Pearson r of ln(loss) vs ln(compute): {:.4}", r.runs.len(), r.pearson_r);
    for f in [&r.power, &r.power_floor, &r.chinchilla].into_iter().flatten() {
        let coefs: Vec<String> = f
            .coefs
            .iter()
            .map(|c| match c.ci95 {
                Some((lo, hi)) => format!("{} = {:.5} [{lo:.5}, {hi:.5}]", c.name, c.value),
                None => format!("{} = {:.5}", c.name, c.value),
            })
            .collect();
        console!("{}: {}", f.formula, coefs.join(", "));
    }
    console_text!("{}", scaling::budgets_markdown(&r.budgets));
    for n in &r.notes {
        console!("note: {n}");
    }
    for f in &r.files {
        console!("wrote {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}
