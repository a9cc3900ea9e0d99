//! `infinity sweep SWEEP.toml`: a base training config and axes, expanded into named runs (the product
//! of the axes), each a run folder with its resolved config. The compute of every run is printed before
//! anything starts. Runs execute here one after another, or are printed as `infinity launch` command
//! lines, or written as a SLURM job-array script. Finished runs are skipped and unfinished ones resume,
//! so running the sweep again continues it.
//!
//! ```toml
//! base = "../configs/demo-cpu.toml"    # relative to this file
//! out = "runs/sweeps/mini"              # run folders: OUT/NAME
//! nproc_per_node = 1                    # ranks per run (`infinity launch`)
//! [set]                                 # overrides for every run
//! "val.dir" = "runs/demo-val"
//! [axes]                                # every combination is a run
//! "model.preset" = ["tiny", "small"]
//! tokens = [2e5, 4e5]                   # a token budget: sets run.steps
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use infinity_data::manifest::write_atomic;
use infinity_data::Manifest;
use serde::Deserialize;

use crate::model::Layout;
use crate::train::config::TrainConfig;
use crate::train::rundir::config_changes;
use crate::train::TokenMix;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub base: PathBuf,
    pub out: PathBuf,
    #[serde(default = "one")]
    pub nproc_per_node: usize,
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    pub axes: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    pub slurm: SlurmSection,
}

fn one() -> usize {
    1
}

/// `#SBATCH` settings of `--slurm` scripts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    pub partition: Option<String>,
    pub time: Option<String>,
    pub gpus_per_node: Option<usize>,
    pub nodes: Option<usize>,
    /// CPU cores per node for the ranks (`--cpus-per-task`; SLURM's default is 1: every rank's data
    /// workers would share one core).
    pub cpus_per_node: Option<usize>,
    /// Runs of the array at once (`--array=0-N%K`).
    pub max_parallel: Option<usize>,
}

/// `text` as one shell word: unchanged when it is plain, else single-quoted.
pub fn sh_quote(text: &str) -> String {
    let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_./=:,@%+-".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// One expanded run.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub name: String,
    pub dir: PathBuf,
    pub config: TrainConfig,
    pub parameters: usize,
    pub tokens: f64,
    /// Training FLOPs: 6·N·D plus the attention term.
    pub compute: f64,
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `model.preset` = tiny → `preset-tiny`; characters outside `[A-Za-z0-9.-]` become `-`.
fn name_part(key: &str, v: &toml::Value) -> String {
    let short = key.rsplit('.').next().unwrap_or(key);
    let shown = match v {
        // 3e-4 and 1e30, not 0.0003 and 1000000000000000000000000000000
        toml::Value::Float(x) if *x != 0.0 && !(1e-3..1e4).contains(&x.abs()) => format!("{x:e}"),
        other => value_text(other),
    };
    let raw = format!("{short}-{shown}");
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

/// Read `path` and expand it into runs (configs validated, compute computed from each run's dataset).
pub fn plan(path: &Path) -> Result<(SweepFile, Vec<PlannedRun>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let de = toml::Deserializer::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let sweep: SweepFile = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{}: at `{}`: {}", path.display(), e.path(), e.inner()))?;
    ensure!(!sweep.axes.is_empty(), "{}: [axes] is empty", path.display());
    for (k, vals) in &sweep.axes {
        ensure!(!vals.is_empty(), "{}: axis `{k}` has no values", path.display());
    }
    // what the sweep sets itself: each run's folder, and with a tokens axis its steps
    for k in sweep.axes.keys().chain(sweep.set.keys()) {
        ensure!(
            k != "run.dir",
            "{}: `{k}` is the sweep's to set (out/NAME for each run): set `out` instead",
            path.display()
        );
        ensure!(
            !(k == "run.steps" && sweep.axes.contains_key("tokens")),
            "{}: `run.steps` beside a `tokens` axis: the token budget sets each run's steps",
            path.display()
        );
    }
    let base = path.parent().unwrap_or(Path::new(".")).join(&sweep.base);

    // the product of the axes, in key order
    let mut combos: Vec<Vec<(&String, &toml::Value)>> = vec![vec![]];
    for (k, vals) in &sweep.axes {
        combos =
            combos.into_iter().flat_map(|c| vals.iter().map(move |v| [c.clone(), vec![(k, v)]].concat())).collect();
    }
    let name_of =
        |combo: &[(&String, &toml::Value)]| combo.iter().map(|(k, v)| name_part(k, v)).collect::<Vec<_>>().join("_");
    let mut named: HashMap<String, String> = HashMap::new();
    for combo in &combos {
        let values = combo.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ");
        if let Some(first) = named.insert(name_of(combo), values.clone()) {
            bail!(
                "{}: the runs ({first}) and ({values}) would share the folder {}: make the axes' values distinct",
                path.display(),
                name_of(combo)
            );
        }
    }
    // absolute paths in every run's config: a SLURM task or a later `train RUN/config.toml` finds the
    // run folder and the datasets from any working folder
    let out = std::path::absolute(&sweep.out).with_context(|| format!("resolving out = {}", sweep.out.display()))?;
    let mut runs = Vec::new();
    for combo in combos {
        let name = name_of(&combo);
        let dir = out.join(&name);
        let mut overrides: Vec<String> = sweep.set.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect();
        let mut tokens_budget = None;
        for (k, v) in &combo {
            if k.as_str() == "tokens" {
                tokens_budget = Some(
                    v.as_float()
                        .or(v.as_integer().map(|i| i as f64))
                        .with_context(|| format!("{}: axis `tokens` needs numbers, found {v}", path.display()))?,
                );
            } else {
                overrides.push(format!("{k}={}", value_text(v)));
            }
        }
        overrides.push(format!("run.dir={}", dir.display()));
        let mut config = TrainConfig::load(&base, &overrides).with_context(|| format!("run {name}"))?;
        let absolute =
            |p: &Path| std::path::absolute(p).with_context(|| format!("run {name}: resolving {}", p.display()));
        config.data.dir = absolute(&config.data.dir)?;
        config.val.dir = config.val.dir.as_deref().map(absolute).transpose()?;
        config.model.init_from = config.model.init_from.as_deref().map(absolute).transpose()?;
        let m = Manifest::load(&config.data.dir)
            .with_context(|| format!("run {name}: the dataset {} (make it first)", config.data.dir.display()))?;
        let num_classes = m.conditions.class.as_ref().map(|c| c.num_classes as usize);
        let text = m.conditions.text.as_ref().map(|t| (t.width as usize, t.max_tokens as usize));
        let mc = config.model_config(m.d as usize, num_classes, text).with_context(|| format!("run {name}"))?;
        let mix = TokenMix::of(&mc, &m, config.data.global_batch);
        let tokens_per_step = mix.mean_tokens * config.data.global_batch as f64;
        if let Some(budget) = tokens_budget {
            let steps = (budget / tokens_per_step).ceil();
            ensure!(
                budget > 0.0 && steps <= 1e12,
                "run {name}: a token budget of {budget:e} is {steps:e} steps of {tokens_per_step:.0} tokens; expected a \
                 positive budget of at most 1e12 steps"
            );
            config.run.steps = steps as u64;
        }
        let steps = config.run.steps as f64;
        runs.push(PlannedRun {
            name,
            dir,
            parameters: Layout::new(&mc).numel,
            tokens: tokens_per_step * steps,
            compute: mix.mean_flops * config.data.global_batch as f64 * steps,
            config,
        });
    }
    Ok((sweep, runs))
}

/// The table printed before anything starts.
pub fn table(runs: &[PlannedRun]) -> String {
    let mut s = format!("{:<40} {:>12} {:>8} {:>12} {:>12}\n", "run", "params", "steps", "tokens", "FLOPs");
    for r in runs {
        s.push_str(&format!(
            "{:<40} {:>12} {:>8} {:>12.3e} {:>12.3e}\n",
            r.name, r.parameters, r.config.run.steps, r.tokens, r.compute
        ));
    }
    let total: f64 = runs.iter().map(|r| r.compute).sum();
    s.push_str(&format!("{} runs, {total:.3e} training FLOPs in total\n", runs.len()));
    s
}

/// Whether a run folder holds a finished run.
pub fn finished(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["finished"] == true)
}

/// Write each run's resolved config to `RUN/config.toml`. A run that has trained (it has a checkpoint)
/// keeps the config it trained with, which its logs and `infinity scaling` describe: a sweep file that
/// now gives it other settings is refused, naming the runs and settings, before anything is written.
pub fn write_configs(runs: &[PlannedRun]) -> Result<()> {
    let mut texts = Vec::new();
    let mut changed = Vec::new();
    for r in runs {
        let text = toml::to_string(&r.config)?;
        let path = r.dir.join("config.toml");
        let trained = crate::train::latest_checkpoint(&r.dir).is_some();
        match std::fs::read_to_string(&path) {
            Ok(old) if trained => {
                let old = with_absolute_paths(&old).with_context(|| format!("reading {}", path.display()))?;
                let diff = config_changes(&old, &text).with_context(|| format!("reading {}", path.display()))?;
                match diff.is_empty() {
                    // the same settings (paths written relative by an earlier build become absolute)
                    true => texts.push((r, text)),
                    false => changed.push(format!("{}: {}", r.name, diff.join(", "))),
                }
            }
            _ => texts.push((r, text)),
        }
    }
    if !changed.is_empty() {
        bail!(
            "{} runs trained with other settings than the sweep file gives them now:\n  {}\nfor a changed sweep set \
             another `out` (or remove those run folders to train them afresh)",
            changed.len(),
            changed.join("\n  ")
        );
    }
    for (r, text) in texts {
        std::fs::create_dir_all(&r.dir).with_context(|| format!("creating {}", r.dir.display()))?;
        write_atomic(&r.dir.join("config.toml"), text.as_bytes())?;
    }
    Ok(())
}

/// A config's text with its paths (`run.dir`, `data.dir`, `val.dir`, `model.init_from`) made absolute
/// against the working folder, as [`plan`] writes them.
fn with_absolute_paths(text: &str) -> Result<String> {
    let mut t: toml::Table = text.parse()?;
    for (section, key) in [("run", "dir"), ("data", "dir"), ("val", "dir"), ("model", "init_from")] {
        if let Some(toml::Value::String(p)) = t.get_mut(section).and_then(|s| s.get_mut(key)) {
            *p = std::path::absolute(&*p)?.display().to_string();
        }
    }
    Ok(toml::to_string(&t)?)
}

/// The arguments after `infinity` that run one run (resuming if it was interrupted).
pub fn command(r: &PlannedRun, nproc: usize) -> Vec<String> {
    let cfg = r.dir.join("config.toml").display().to_string();
    let train = ["train".to_string(), cfg, "--resume".into(), "auto".into()];
    if nproc > 1 {
        let log_dir = r.dir.join("logs").display().to_string();
        [
            vec![
                "launch".into(),
                "--nproc-per-node".into(),
                nproc.to_string(),
                "--log-dir".into(),
                log_dir,
                "--".into(),
            ],
            train.to_vec(),
        ]
        .concat()
    } else {
        train.to_vec()
    }
}

/// Run every unfinished run here, one after another; returns the names of the failed ones.
pub fn run_local(runs: &[PlannedRun], nproc: usize, exe: &Path) -> Result<Vec<String>> {
    let mut failed = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        if finished(&r.dir) {
            console!("[{}/{}] {}: finished, skipped", i + 1, runs.len(), r.name);
            continue;
        }
        let log = r.dir.join("train.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        console!("[{}/{}] {}: running (log {})", i + 1, runs.len(), r.name, log.display());
        let t0 = std::time::Instant::now();
        let status = Command::new(exe)
            .args(command(r, nproc))
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("starting {}", exe.display()))?;
        if status.success() && finished(&r.dir) {
            console!("    done in {:.1} s", t0.elapsed().as_secs_f64());
        } else {
            console!("    FAILED ({status}); see {}", log.display());
            failed.push(r.name.clone());
        }
    }
    Ok(failed)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_sweep_parses_and_names_runs() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/sweeps/demo.toml");
        let s: SweepFile = toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(s.axes.values().map(Vec::len).product::<usize>(), 8);
        // the learning-rate pair shares a folder: the μP file names its runs by its base width
        let read = |f: &str| -> SweepFile {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/sweeps").join(f);
            toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let (mu, sp) = (read("mup-lr.toml"), read("sp-lr.toml"));
        assert_eq!(mu.out, sp.out);
        assert!(mu.axes.contains_key("model.mup_base_width") && !sp.axes.contains_key("model.mup_base_width"));
        let rest: Vec<_> = mu.axes.iter().filter(|(k, _)| *k != "model.mup_base_width").collect();
        assert_eq!(rest, sp.axes.iter().collect::<Vec<_>>(), "the same runs otherwise");
        let mut mu_set = mu.set.clone();
        assert!(mu_set.remove("model.mup_base_heads").is_some());
        assert_eq!(mu_set, sp.set);
        assert_eq!(name_part("optim.lr", &toml::Value::Float(3e-4)), "lr-3e-4");
        assert_eq!(name_part("model.preset", &toml::Value::String("layer 12".into())), "preset-layer-12");
        assert_eq!(name_part("run.steps", &toml::Value::Integer(500)), "steps-500");
        assert_eq!(sh_quote("runs/a-1/config.toml"), "runs/a-1/config.toml");
        assert_eq!(sh_quote("my sweep/it's"), "'my sweep/it'\\''s'");
    }
}
