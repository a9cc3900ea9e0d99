//! The `--slurm` output of `infinity sweep`: a SLURM job-array script with one array task per run, its
//! `#SBATCH` settings taken from the sweep file's `[slurm]` section, that resumes each run and requeues
//! a task stopped before its run's last step.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{sh_quote, PlannedRun, SweepFile};

/// A SLURM job-array script: one array task per run, with absolute, quoted paths (it may be submitted
/// from anywhere). A task the time-limit warning (`--signal=USR1@300`) or preemption stopped has
/// checkpointed and exited 0 with `"finished": false` in its summary: the script requeues it, and the
/// requeued task resumes its run.
pub fn slurm_script(sweep: &SweepFile, runs: &[PlannedRun], exe: &str) -> Result<String> {
    if runs.is_empty() {
        bail!("no runs");
    }
    let abs = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()));
    let s = &sweep.slurm;
    let mut out = String::from("#!/bin/bash\n#SBATCH --job-name=infinity-sweep\n");
    let max = s.max_parallel.map_or(String::new(), |k| format!("%{k}"));
    out.push_str(&format!("#SBATCH --array=0-{}{max}\n", runs.len() - 1));
    if let Some(p) = &s.partition {
        out.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(t) = &s.time {
        out.push_str(&format!("#SBATCH --time={t}\n"));
    }
    out.push_str(&format!("#SBATCH --nodes={}\n#SBATCH --ntasks-per-node=1\n", s.nodes.unwrap_or(1)));
    if let Some(g) = s.gpus_per_node {
        out.push_str(&format!("#SBATCH --gpus-per-node={g}\n"));
    }
    if let Some(c) = s.cpus_per_node {
        out.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
    }
    let log = abs(&sweep.out)?.join("slurm-%A_%a.log").display().to_string();
    out.push_str(&format!("#SBATCH --output={}\n#SBATCH --signal=USR1@300\n#SBATCH --requeue\n\n", sh_quote(&log)));
    out.push_str("# one run per array task; a requeued or re-submitted task resumes its run\nRUNS=(\n");
    for r in runs {
        out.push_str(&format!("  {}\n", sh_quote(&abs(&r.dir)?.display().to_string())));
    }
    out.push_str(")\nRUN=${RUNS[$SLURM_ARRAY_TASK_ID]}\n");
    // sbatch exports the submitting shell's environment: `INF__…` variables there would be applied
    // again over each run's config.toml, which already holds the values the sweep planned with
    out.push_str(
        "# each run's config.toml is complete: no INF__ variables of the submitting shell on top of it\n\
         for v in $(compgen -e); do case $v in INF__*) unset \"$v\";; esac; done\n",
    );
    out.push_str("export INFINITY_RDZV_TOKEN=$(echo \"$SLURM_JOB_ID-$RANDOM$RANDOM\" | sha256sum | cut -c1-32)\n");
    out.push_str(&format!(
        "srun --kill-on-bad-exit=1 {} launch --nproc-per-node {} --max-restarts 3 --log-dir \"$RUN/logs\" \\\n  -- train \
         \"$RUN/config.toml\" --resume auto\nrc=$?\n",
        sh_quote(exe),
        sweep.nproc_per_node
    ));
    out.push_str(
        "# stopped before its last step (time-limit warning, preemption): checkpointed, so requeue to resume\n\
         if [ $rc -eq 0 ] && grep -q '\"finished\": false' \"$RUN/summary.json\" 2>/dev/null; then\n  \
         scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\nfi\nexit $rc\n",
    );
    Ok(out)
}
