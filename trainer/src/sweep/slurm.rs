//! The `--slurm` output of `infinity sweep`: a SLURM job-array script with one array task per run, its
//! `#SBATCH` settings taken from the sweep file's `[slurm]` section, that resumes each run, requeues a
//! task stopped before its run's last step and skips a run settled since the script was written; and
//! the plan's warnings about GPUs requested that the runs would not use.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{sh_quote, PlannedRun, SweepFile};
use crate::train::config::DeviceChoice;

/// Warnings for a `[slurm] gpus_per_node` the runs do not match: every rank takes one GPU of its node,
/// so GPUs beyond `nproc_per_node` sit idle (as do all of them for runs on the CPU), and ranks beyond
/// the GPUs get none.
pub fn gpu_warnings(sweep: &SweepFile, runs: &[PlannedRun]) -> Vec<String> {
    let Some(gpus) = sweep.slurm.gpus_per_node.filter(|&g| g > 0) else { return Vec::new() };
    let cpu: Vec<&str> =
        runs.iter().filter(|r| r.config.run.device == DeviceChoice::Cpu).map(|r| r.name.as_str()).collect();
    let n = sweep.nproc_per_node;
    let warning = if !cpu.is_empty() {
        let which = match cpu.len() == runs.len() {
            true => "every run trains".to_string(),
            false => format!("the runs {} train", cpu.join(", ")),
        };
        format!(
            "[slurm] gpus_per_node = {gpus}, but {which} with run.device = \"cpu\": the GPUs would sit idle; set \
             run.device = \"cuda\" (or \"auto\") in the base config or [set], or leave gpus_per_node out"
        )
    } else if gpus > n {
        format!(
            "[slurm] gpus_per_node = {gpus}, but nproc_per_node = {n}: each rank uses one GPU, so {} of each node's \
             GPUs would sit idle; set nproc_per_node = {gpus}, or gpus_per_node = {n}",
            gpus - n
        )
    } else if gpus < n {
        format!(
            "[slurm] gpus_per_node = {gpus}, but nproc_per_node = {n}: each rank uses one GPU, so {} would get \
             none; set gpus_per_node = {n}, or nproc_per_node = {gpus}",
            ranks_without_gpus(gpus, n)
        )
    } else {
        return Vec::new();
    };
    vec![warning]
}

/// The warning for a script without `[slurm] cpus_per_node`: SLURM gives such a task one CPU (unless the
/// cluster's defaults say otherwise), which every rank's data workers and host work then share.
pub fn cpus_warning(sweep: &SweepFile) -> Option<String> {
    sweep.slurm.cpus_per_node.is_none().then(|| {
        "[slurm] cpus_per_node is not set: the script asks for no --cpus-per-task, and SLURM's default of 1 \
         CPU would put every rank's data workers on one core (unless the cluster sets its own); set it to the \
         cores a node gives a task"
            .to_string()
    })
}

/// The local ranks (of `n`) past a node's `gpus` GPUs: `local rank 1`, `local ranks 2 to 3`.
fn ranks_without_gpus(gpus: usize, n: usize) -> String {
    match n - gpus {
        1 => format!("local rank {gpus}"),
        _ => format!("local ranks {gpus} to {}", n - 1),
    }
}

/// A SLURM job-array script: one array task per run, with absolute, quoted paths (it may be submitted
/// from anywhere). A task the time-limit warning (`--signal=USR1@S`, `[slurm] signal_s`) or preemption
/// stopped has checkpointed and exited 0 with `"finished": false` in its summary: the script requeues
/// it, and the requeued task resumes its run, appending to its log.
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
    // a requeued task writes the same log file: appended to, not truncated (its earlier part tells
    // why it stopped)
    out.push_str(&format!(
        "#SBATCH --output={}\n#SBATCH --open-mode=append\n#SBATCH --signal=USR1@{}\n#SBATCH --requeue\n\n",
        sh_quote(&log),
        s.signal_s()
    ));
    out.push_str("# one run per array task; a requeued or re-submitted task resumes its run\nRUNS=(\n");
    for r in runs {
        out.push_str(&format!("  {}\n", sh_quote(&abs(&r.dir)?.display().to_string())));
    }
    out.push_str(")\nRUN=${RUNS[$SLURM_ARRAY_TASK_ID]}\n");
    // a script submitted again after a run finished (or diverged) must not train it again, which a
    // finished run whose checkpoints were deleted since would do from its first step
    out.push_str(
        "# a settled run is left alone, even with its checkpoints deleted since this script was written\n\
         for s in finished diverged; do\n  if grep -Eq \"\\\"$s\\\": *true\" \"$RUN/summary.json\" 2>/dev/null; then\n    \
         echo \"run $RUN: $s (its summary.json says so): skipped\"\n    exit 0\n  fi\ndone\n",
    );
    // sbatch exports the submitting shell's environment: `INF__…` variables there would be applied
    // again over each run's config.toml, which already holds the values the sweep planned with
    out.push_str(
        "# each run's config.toml is complete: no INF__ variables of the submitting shell on top of it\n\
         for v in $(compgen -e); do case $v in INF__*) unset \"$v\";; esac; done\n",
    );
    out.push_str("export INFINITY_RDZV_TOKEN=$(echo \"$SLURM_JOB_ID-$RANDOM$RANDOM\" | sha256sum | cut -c1-32)\n");
    // (--label: each line of the job's output begins with its task, one per node: which node said it)
    // the time-limit warning's lead time, less what the script keeps to requeue, is the ranks' for their
    // stop checkpoint (the agent's SIGKILL follows after its grace)
    out.push_str(&format!(
        "srun --label --kill-on-bad-exit=1 {} launch --nproc-per-node {} --max-restarts 3 --grace-s {}{} \\\n  \
         --log-dir \"$RUN/logs\" -- train \"$RUN/config.toml\" --resume auto\nrc=$?\n",
        sh_quote(exe),
        sweep.nproc_per_node,
        s.agent_grace_s(),
        s.numa_binding.as_ref().map(|m| format!(" --numa-binding {m}")).unwrap_or_default()
    ));
    out.push_str(
        "# stopped before its last step (time-limit warning, preemption): checkpointed, or stopped before it\n\
         # trained (no summary.json yet), so requeue to resume\n\
         if [ $rc -eq 0 ] && ! grep -Eq '\"finished\": *true' \"$RUN/summary.json\" 2>/dev/null; then\n  \
         scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\nfi\nexit $rc\n",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ranks_past_the_gpus_are_named() {
        assert_eq!(super::ranks_without_gpus(1, 2), "local rank 1");
        assert_eq!(super::ranks_without_gpus(2, 4), "local ranks 2 to 3");
    }
}
