//! `infinity sweep SWEEP.toml`: a base training config and axes, expanded into named runs (the product
//! of the axes, crossed with the points of `[linked]` values), each a run folder with its resolved
//! config. The compute of every run is printed before
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
//!
//! (`compute = [1e15, 4e15]`, a budget of training FLOPs, sets run.steps instead: an IsoFLOP design;
//! `tokens_per_parameter = [20]` a token budget of 20 × each run's parameters: Chinchilla's ratio.)
//! Values that go together (a size ladder) are `[linked]`: the `i`-th of each key make one point,
//! crossed with `[axes]`:
//!
//! ```toml
//! [linked]
//! "model.depth" = [4, 8, 12]
//! "model.embed_dim" = [256, 512, 768]
//! "model.num_heads" = [4, 8, 12]
//! ```
//!
//! This module holds the expansion into a plan (runs, warnings, the table printed first); `file` the
//! sweep file's format and checks, `existing` what `out` already holds, `run` where each run stands and
//! their execution here, `slurm` the job-array script.

mod existing;
mod failed;
mod file;
mod run;
mod slurm;
mod status;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use infinity_data::Manifest;

use self::file::{in_sweep_terms, override_text};
use crate::model::Layout;
use crate::train::config::{same_setting, TrainConfig};
use crate::train::TokenMix;

pub use self::file::{SlurmSection, SweepFile};
pub use self::run::{
    check_configs, command, diverged, finished, run_local, skipped, state, write_configs, LocalOutcome, RunState, Slots,
};
pub use self::slurm::{cpus_warning as slurm_cpus_warning, slurm_script};
pub use self::status::status_table;

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
    /// The run's budget (a `tokens` or `compute` axis, or `tokens_per_parameter` as tokens), which set
    /// `run.steps`.
    pub budget: Option<Budget>,
    /// The manifest of its training data as `infinity train` joins it (a mix's datasets in one), whose
    /// fingerprint a run that has trained recorded in its `derived.json`.
    pub dataset: Manifest,
    /// Its values of the sweep's axes (`[axes]` and `[linked]`, budgets included), which
    /// `RUN/sweep-point.json` keeps for the run's TensorBoard HParams.
    pub point: Vec<(String, toml::Value)>,
}

/// A run's budget of training tokens or FLOPs (the `tokens`, `compute` and `tokens_per_parameter`
/// axes): it sets `run.steps`, the whole steps that spend it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Tokens(f64),
    Compute(f64),
    /// Tokens as a multiple of the run's parameters (Chinchilla's 20); [`Budget::of_model`] makes it
    /// a token budget once the model is known.
    TokensPerParameter(f64),
}

impl Budget {
    /// The axes that set a budget.
    pub const AXES: [&'static str; 3] = ["tokens", "compute", "tokens_per_parameter"];

    fn of(axis: &str, value: &toml::Value, path: &Path) -> Result<Budget> {
        let v = value.as_float().or(value.as_integer().map(|i| i as f64));
        let v = v.with_context(|| format!("{}: axis `{axis}` needs numbers, found {value}", path.display()))?;
        Ok(match axis {
            "tokens" => Budget::Tokens(v),
            "compute" => Budget::Compute(v),
            _ => Budget::TokensPerParameter(v),
        })
    }

    /// The budget of a run of `parameters`: tokens per parameter become tokens.
    fn of_model(self, parameters: usize) -> Budget {
        match self {
            Budget::TokensPerParameter(r) => Budget::Tokens(r * parameters as f64),
            other => other,
        }
    }

    /// Of a run's (or a sample's) tokens and FLOPs, the one the budget counts.
    fn counted(self, tokens: f64, flops: f64) -> f64 {
        match self {
            Budget::Tokens(_) | Budget::TokensPerParameter(_) => tokens,
            Budget::Compute(_) => flops,
        }
    }

    fn amount(self) -> f64 {
        match self {
            Budget::Tokens(v) | Budget::Compute(v) | Budget::TokensPerParameter(v) => v,
        }
    }

    /// What the budget counts, and its name: `tokens`, `token budget`.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Budget::Tokens(_) | Budget::TokensPerParameter(_) => ("tokens", "token budget"),
            Budget::Compute(_) => ("FLOPs", "compute budget"),
        }
    }
}

/// A sweep file expanded: its runs, and what the planner found worth a warning.
pub struct Plan {
    pub sweep: SweepFile,
    /// `out`, absolute (resolved from the current directory).
    pub out: PathBuf,
    pub runs: Vec<PlannedRun>,
    /// Warnings naming a run (budgets missed by whole steps, warm-up past the last step, GPUs the runs
    /// leave idle), printed before anything starts.
    pub warnings: Vec<String>,
    /// Warnings about what `out` holds (runs beside the sweep file while `out` points elsewhere, folders
    /// that train a planned config under another name, run folders the plan does not name), printed
    /// with the others and by `--status`.
    pub out_warnings: Vec<String>,
    /// `INF__…` variables of this environment, each with what became of it (written into every run's
    /// config, or replaced by the sweep's own value for that key).
    pub env: Vec<String>,
}

/// The `INF__SECTION__KEY` variables set in this process's environment, as (variable, value).
/// `infinity train` applies them over its config file: a sweep bakes them into each run's
/// `config.toml` at plan time and keeps them away from the runs it starts, so that a run trains the
/// config its folder holds.
pub fn env_overrides() -> Vec<(String, String)> {
    crate::train::config::inf_vars()
}

/// The config key an `INF__…` variable sets (`INF__OPTIM__LR` → `optim.lr`).
pub fn env_key(var: &str) -> String {
    crate::train::config::inf_var_key(var).unwrap_or_default()
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `model.preset` = tiny → `preset-tiny`; characters outside `[A-Za-z0-9.-]` become `-`.
fn name_part(key: &str, v: &toml::Value) -> String {
    // (`data.mix[0].weight`: `mix0-weight`, apart from `data.weight`)
    let mut segments = key.rsplit('.');
    let last = segments.next().unwrap_or(key);
    let short = match segments.next().and_then(|s| s.strip_suffix(']')).and_then(|s| s.split_once('[')) {
        Some((table, i)) => format!("{table}{i}-{last}"),
        None => last.to_string(),
    };
    fn shown(v: &toml::Value) -> String {
        match v {
            // 3e-4 and 1e30, not 0.0003 and 1000000000000000000000000000000
            toml::Value::Float(x) if long_in_digits(*x) => format!("{x:e}"),
            // (a phase's weights [0.2, 0.8]: `weights-0.2-0.8`)
            toml::Value::Array(a) => a.iter().map(shown).collect::<Vec<_>>().join("-"),
            // (a schedule { kind = "wsd", decay_fraction = 0.2 }: `decay-wsd-decay-fraction-0.2`, its kind first)
            toml::Value::Table(t) => {
                let kind = t.get("kind").map(shown);
                let rest = t.iter().filter(|(k, _)| *k != "kind").map(|(k, v)| format!("{k}-{}", shown(v)));
                kind.into_iter().chain(rest).collect::<Vec<_>>().join("-")
            }
            other => value_text(other),
        }
    }
    let raw = format!("{short}-{}", shown(v));
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

/// Whether `x` reads better in scientific notation (`3e-4`, `1e9`) than in digits: away from 1e-3 to 1e4.
pub(crate) fn long_in_digits(x: f64) -> bool {
    x != 0.0 && !(1e-3..1e4).contains(&x.abs())
}

/// Refuse an axis value written as a float (`1.0`) for a setting the config holds as a whole number
/// (`model.depth`): the config takes it, but the run is named `depth-1.0`, where `[1, 2]` names it
/// `depth-1`, so the same run would be trained again under another name.
fn whole_numbers_as_whole(config: &TrainConfig, combo: &[(&String, &toml::Value)], path: &Path) -> Result<()> {
    let resolved = toml::Table::try_from(config)?;
    for (key, value) in combo {
        let toml::Value::Float(x) = value else { continue };
        if matches!(crate::train::config::value_at(&resolved, key), Some(toml::Value::Integer(_))) {
            bail!(
                "{}: axis `{key}` = {x:?}: `{key}` is a whole number: write {}, not {x:?} (runs are named after \
                 the values as written, so {x:?} and {} would name one run twice)",
                path.display(),
                x.trunc(),
                x.trunc()
            );
        }
    }
    Ok(())
}

/// Read `path` and expand it into runs (configs validated, compute computed from each run's dataset).
pub fn plan(path: &Path) -> Result<Plan> {
    plan_with(path, true)
}

/// [`plan`], the validation sets checked only with `check_val`: `--status` reads the run folders
/// without them (a run's steps come from its training data, which it needs).
pub fn plan_with(path: &Path, check_val: bool) -> Result<Plan> {
    let sweep = SweepFile::read(path)?;
    // absolute paths in every run's config: a SLURM task or a later `train RUN/config.toml` finds the
    // run folder and the datasets from any working folder
    let out = std::path::absolute(&sweep.out).with_context(|| format!("resolving out = {}", sweep.out.display()))?;
    // runs beside the sweep file while `out` names a folder not made yet: said first, and with an error
    // (datasets given relative to the same folder are not found either)
    let elsewhere = existing::out_beside_the_file(path, &sweep, &out);
    match expand(path, sweep, out, check_val) {
        Ok(mut plan) => {
            plan.out_warnings.splice(0..0, elsewhere);
            Ok(plan)
        }
        Err(e) => match elsewhere {
            Some(w) => Err(anyhow::anyhow!("{e:#}\nnote: {w}")),
            None => Err(e),
        },
    }
}

/// The runs of a sweep file, `out` resolved.
fn expand(path: &Path, sweep: SweepFile, out: PathBuf, check_val: bool) -> Result<Plan> {
    let base = path.parent().unwrap_or(Path::new(".")).join(&sweep.base);
    // (a missing base file is the sweep file's error, not each run's)
    if !base.is_file() {
        bail!(
            "{}: `base` = {:?}: no config file at {}{}",
            path.display(),
            sweep.base.display(),
            base.display(),
            if sweep.base.is_relative() { " (a path relative to the sweep file's folder)" } else { "" }
        );
    }

    // the linked values (their i-th together), crossed with the product of the axes, in key order
    let points = sweep.linked.values().next().map_or(1, Vec::len);
    let mut combos: Vec<Vec<(&String, &toml::Value)>> =
        (0..points).map(|i| sweep.linked.iter().map(|(k, vals)| (k, &vals[i])).collect()).collect();
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
            ensure!(
                first != values,
                "{}: ({values}) is listed twice: give each value of an axis (each point of [linked]) once",
                path.display()
            );
            bail!(
                "{}: the runs ({first}) and ({values}) would share the folder {}: make the axes' values distinct",
                path.display(),
                name_of(combo)
            );
        }
    }
    // the environment's `INF__…` variables go into every run's config (TrainConfig::load applies them
    // under the sweep's own settings); the runs the sweep starts do not see them again
    let sets = |key: &str| {
        let related = |k: &str| same_setting(k, key);
        let steps = key == "run.steps" && Budget::AXES.iter().any(|a| sweep.varied(a));
        key == "run.dir"
            || steps
            || sweep.set.keys().chain(sweep.axes.keys()).chain(sweep.linked.keys()).any(|k| related(k))
    };
    let env: Vec<String> = env_overrides()
        .into_iter()
        .map(|(var, value)| match sets(&env_key(&var)) {
            true => format!("{var}={value}: ignored, the sweep sets `{}` itself", env_key(&var)),
            false => format!("{var}={value}: written into every run's config.toml"),
        })
        .collect();
    let mut warnings = Vec::new();
    // (per pair of datasets and the model: which condition it takes, and its caption bound, count)
    let mut checked_val: Vec<(PathBuf, PathBuf, crate::model::ModelConfig)> = Vec::new();
    let mut runs = Vec::new();
    for combo in combos {
        let name = name_of(&combo);
        let dir = out.join(&name);
        let point: Vec<(String, toml::Value)> = combo.iter().map(|(k, v)| ((*k).clone(), (*v).clone())).collect();
        let mut overrides: Vec<String> = sweep.set.iter().map(|(k, v)| override_text(k, v)).collect();
        let mut budget = None;
        for (k, v) in &combo {
            match Budget::AXES.contains(&k.as_str()) {
                true => budget = Some(Budget::of(k, v, path)?),
                false => overrides.push(override_text(k, v)),
            }
        }
        let from_file = overrides.clone();
        overrides.push(format!("run.dir={}", dir.display()));
        if budget.is_some() {
            // a placeholder the budget replaces below, so that the base config's steps do not take part
            // in the warm-up check (which runs again, with the budget's steps, once they are known)
            overrides.push(format!("run.steps={}", 1_000_000_000_000u64));
        }
        // (quietly: what it would warn of is said below, naming the run)
        let mut config = TrainConfig::load_quietly(&base, &overrides)
            .map_err(|e| in_sweep_terms(e, path, &sweep, &from_file))
            .with_context(|| format!("run {name}"))?;
        // (with a budget, the warm-up is checked against the steps it sets, below)
        let mistakes = config.likely_mistakes().into_iter();
        let mistakes = mistakes.filter(|w| budget.is_none() || !w.starts_with("optim.warmup_steps"));
        warnings.extend(mistakes.map(|w| format!("run {name}: {w}")));
        whole_numbers_as_whole(&config, &combo, path).with_context(|| format!("run {name}"))?;
        // (a run's start looks for its source; a plan says at once where one is missing)
        if let Some(p) = config.model.init_from.as_ref().filter(|p| !p.exists()) {
            if crate::train::latest_checkpoint(&config.run.dir).is_none() {
                return Err(crate::train::init_from::missing(p)).with_context(|| format!("run {name}"));
            }
        }
        // the batch split over the ranks, as `infinity train` checks it at start (after a queue's wait)
        let micro = config.data.micro_batch.samples().unwrap_or(1);
        crate::train::micro_steps(&config, sweep.world(), micro).with_context(|| {
            let nodes = sweep.slurm.nodes.map_or(String::new(), |n| format!(" × [slurm] nodes = {n}"));
            format!("run {name}: {}: nproc_per_node = {}{nodes}", path.display(), sweep.nproc_per_node)
        })?;
        let absolute =
            |p: &Path| std::path::absolute(p).with_context(|| format!("run {name}: resolving {}", p.display()));
        config.data.dir = absolute(&config.data.dir)?;
        for m in &mut config.data.mix {
            m.dir = absolute(&m.dir)?;
        }
        config.val.dir = config.val.dir.as_deref().map(absolute).transpose()?;
        for s in &mut config.val.sets {
            s.dir = absolute(&s.dir)?;
        }
        config.model.init_from = config.model.init_from.as_deref().map(absolute).transpose()?;
        let m = Manifest::load(&config.data.dir)
            .with_context(|| format!("run {name}: the dataset {} (make it first)", config.data.dir.display()))?;
        let mc = config.model_for(&m).with_context(|| format!("run {name}"))?;
        crate::train::check_schedules_fit(&mc, &m).with_context(|| format!("run {name}"))?;
        // the validation sets (`val.dir`, `val.sets`), as `infinity train` checks them before its first
        // step (once per pair of datasets): a missing or mismatched one would fail every run after it started
        for (key, val) in config.val.dirs() {
            if check_val && !checked_val.contains(&(config.data.dir.clone(), val.clone(), mc.clone())) {
                let vm = Manifest::load(val).with_context(|| {
                    format!(
                        "run {name}: {key} {} (the validation dataset: make it with `infinity data synth --tokenizer \
                         {}` or `infinity data pack --tokenizer …`, or set {key} to an existing one)",
                        val.display(),
                        config.data.dir.join("tokenizer.safetensors").display()
                    )
                })?;
                crate::train::val::compatible(&m, &config.data.dir, (&vm, val), &key, Some(&mc))
                    .with_context(|| format!("run {name}"))?;
                crate::train::check_schedules_fit(&mc, &vm)
                    .with_context(|| format!("run {name}: {key} {}", val.display()))?;
                checked_val.push((config.data.dir.clone(), val.clone(), mc.clone()));
            }
        }
        // (a mix's datasets, as `infinity train` checks them before its first step)
        let mut parts = vec![m.clone()];
        for (key, dir) in config.data.dirs().skip(1) {
            let pm = Manifest::load(dir).with_context(|| format!("run {name}: {key} {}", dir.display()))?;
            crate::train::check_mixable((&m, &config.data.dir), (&pm, dir), &key)
                .with_context(|| format!("run {name}"))?;
            parts.push(pm);
        }
        // (a global batch no bucket fills: `infinity train`'s loader refuses it at start)
        let g = config.data.global_batch as u64;
        let buckets: Vec<u64> = parts.iter().flat_map(crate::infer::rows_by_schedule).collect();
        if !buckets.iter().any(|&rows| rows >= g) {
            bail!(
                "run {name}: data.global_batch = {g}: no bucket (schedule) of its data has a full global batch \
                 (largest: {} rows), so its loader would draw none",
                buckets.iter().max().unwrap_or(&0)
            );
        }
        let manifests: Vec<&Manifest> = parts.iter().collect();
        let mut dataset = m.clone();
        for (p, pm) in parts.iter().enumerate().skip(1) {
            dataset.append_part(p, pm);
        }
        let parameters = Layout::new(&mc).numel;
        let ratio = match budget {
            Some(Budget::TokensPerParameter(r)) => Some((r, parameters)),
            _ => None,
        };
        let budget = budget.map(|b| b.of_model(parameters));
        let token_mix = |c: &TrainConfig| TokenMix::of_mix(&mc, &manifests, c).with_context(|| format!("run {name}"));
        let mut mix = token_mix(&config)?;
        if let Some(budget) = budget {
            // a mix's phases weigh the mean per step by their steps in the run, which the budget sets:
            // settled by repeating (the steps move less each time)
            for round in 0.. {
                let per_sample = budget.counted(mix.mean_tokens, mix.mean_flops);
                let per_step = (per_sample * config.data.global_batch as f64, per_sample);
                let mut said = Vec::new();
                let steps = budget_steps(&name, (budget, ratio), per_step, &config, &mut said)?;
                let settled = steps == config.run.steps || config.data.phases.is_empty();
                config.run.steps = steps;
                if !settled {
                    mix = token_mix(&config)?; // (the mean over the new length)
                }
                if settled || round == 16 {
                    warnings.extend(said);
                    break;
                }
            }
            // what depends on the length, checked again with the budget's (phases set by a share of
            // run.steps land on their steps now: two may meet, or one fall on step 0)
            // (quietly: the load warned of the rest, and `budget_steps` of a warm-up past the last step)
            let steps = config.run.steps;
            config.validate_quietly().with_context(|| format!("run {name}: with its budget's {steps} steps"))?;
        }
        // (buckets its global batch never fills: `infinity train` warns of them too, once the run started)
        let undrawn = mix.undrawn_warning(config.data.global_batch, dataset.total_rows);
        warnings.extend(undrawn.map(|w| format!("run {name}: {w}")));
        let tokens_per_step = mix.mean_tokens * config.data.global_batch as f64;
        let flops_per_step = mix.mean_flops * config.data.global_batch as f64;
        let steps = config.run.steps as f64;
        runs.push(PlannedRun {
            name,
            dir,
            parameters,
            tokens: tokens_per_step * steps,
            compute: flops_per_step * steps,
            budget,
            config,
            dataset,
            point,
        });
    }
    // two folders that would train the same thing: budgets that round to the same whole steps, or
    // axis values that resolve alike (a value equal to the base's)
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, r) in runs.iter().enumerate() {
        let key = existing::config_key(&r.config)?;
        if let Some(&j) = seen.get(&key) {
            let first = &runs[j];
            let why = match (first.budget, r.budget) {
                (Some(a), Some(b)) => {
                    let (unit, what) = b.words();
                    let per_step = quantity(b.counted(r.tokens, r.compute) / r.config.run.steps as f64);
                    format!(
                        "their {what}s {:.3e} and {:.3e} both come to {} whole steps of {per_step} {unit}: make the \
                         budgets differ by at least one step",
                        a.amount(),
                        b.amount(),
                        r.config.run.steps,
                    )
                }
                _ => "their axis values resolve to the same settings: drop one of the values".to_string(),
            };
            bail!("{}: the runs {} and {} would train the same config; {why}", path.display(), first.name, r.name);
        }
        seen.insert(key, i);
    }
    warnings.extend(slurm::gpu_warnings(&sweep, &runs));
    let (same, others) = existing::folders_in_out(&out, &runs)?;
    let out_warnings = same.into_iter().chain(others).collect();
    Ok(Plan { sweep, out, runs, warnings, out_warnings, env })
}

/// An amount as messages show it: whole numbers as they are, others to a few digits.
fn quantity(x: f64) -> String {
    match x {
        x if x.fract() == 0.0 && x.abs() < 1e12 => format!("{x}"),
        x if x.abs() < 1e6 => format!("{x:.2}"),
        x => format!("{x:.4e}"),
    }
}

/// The whole steps that spend `budget` at `(per_step, per_sample)` of what it counts (a warning into
/// `warnings` when they overshoot it by more than 5 %, and when the warm-up takes them all); `ratio`:
/// the tokens per parameter and the parameters of a budget given so.
fn budget_steps(
    name: &str,
    (budget, ratio): (Budget, Option<(f64, usize)>),
    (per_step, per_sample): (f64, f64),
    config: &TrainConfig,
    warnings: &mut Vec<String>,
) -> Result<u64> {
    let (unit, what) = budget.words();
    let amount = budget.amount();
    let step_text = quantity(per_step);
    let (from, raise) = match ratio {
        Some((r, n)) => (
            format!(" ({r} tokens per parameter × {n} parameters)"),
            format!("tokens_per_parameter to at least {:.3}", per_step / n as f64),
        ),
        None => (String::new(), format!("the budget to at least {step_text}")),
    };
    // (a budget of 0 or below has no steps to give: said as what it is, not as its steps)
    let amount_text = quantity(amount);
    ensure!(
        amount > 0.0 && amount.is_finite(),
        "run {name}: a {what} of {amount_text}{from}: expected a positive, finite budget"
    );
    let steps = (amount / per_step).ceil();
    ensure!(
        steps <= 1e12,
        "run {name}: a {what} of {amount_text} is {steps:.3e} steps of {step_text} {unit}; expected a positive budget \
         of at most 1e12 steps"
    );
    ensure!(
        amount >= per_step,
        "run {name}: a {what} of {amount_text}{from} is less than one step of {step_text} {unit} (data.global_batch {} \
         × {per_sample:.3e} {unit} per sample): raise {raise}, or lower data.global_batch",
        config.data.global_batch,
    );
    let realised = steps * per_step;
    if realised > amount * 1.05 {
        warnings.push(format!(
            "run {name}: {steps} whole steps of {step_text} {unit} are {realised:.3e} {unit}, {:.0} % over its \
             budget of {amount:.3e}{from} (its compute and `infinity scaling` count what it trains); budgets that \
             are multiples of {step_text} {unit} are met exactly",
            (realised / amount - 1.0) * 100.0
        ));
    }
    // `TrainConfig::validate`'s step check again, now with the budget's steps (as `infinity train` warns,
    // so does the plan, naming the run)
    if config.optim.warmup_steps as f64 >= steps {
        warnings.push(format!(
            "run {name}: optim.warmup_steps ({}) is not below run.steps ({steps}, from its {what} of {amount:.3e}): \
             the learning rate never reaches optim.lr; lower optim.warmup_steps or raise the budget",
            config.optim.warmup_steps
        ));
    }
    Ok(steps as u64)
}

/// `rows` (the header first) as lines of columns as wide as their widest entry, two spaces apart: the
/// first `left` left-aligned, the others (numbers) right-aligned.
fn aligned<const N: usize>(rows: &[[String; N]], left: usize) -> String {
    let widths: Vec<usize> = (0..N).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();
    let mut s = String::new();
    for row in rows {
        for (c, (cell, w)) in row.iter().zip(&widths).enumerate() {
            let sep = if c == 0 { "" } else { "  " };
            match c < left {
                true => s.push_str(&format!("{sep}{cell:<w$}")),
                false => s.push_str(&format!("{sep}{cell:>w$}")),
            }
        }
        s.push('\n');
    }
    s
}

/// The table printed before anything starts, its columns as wide as their widest entry, and where the
/// run folders are.
pub fn table(runs: &[PlannedRun], out: &Path) -> String {
    let head = ["run", "params", "steps", "tokens", "FLOPs"].map(String::from);
    let rows: Vec<[String; 5]> = std::iter::once(head)
        .chain(runs.iter().map(|r| {
            let (params, steps) = (r.parameters.to_string(), r.config.run.steps.to_string());
            [r.name.clone(), params, steps, format!("{:.3e}", r.tokens), format!("{:.3e}", r.compute)]
        }))
        .collect();
    let mut s = aligned(&rows, 1);
    let total: f64 = runs.iter().map(|r| r.compute).sum();
    s.push_str(&format!("{}, {total:.3e} training FLOPs in total\n", infinity_launcher::plural(runs.len(), "run")));
    s.push_str(&format!("run folders: {}/NAME\n", out.display()));
    s
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
        // the IsoFLOP design: every width at each compute budget, 3 or more of each for its profiles
        let iso = read("isoflop.toml");
        assert!(
            iso.axes["compute"].len() >= 3
                && iso.axes["model.embed_dim"].len() >= 3
                && !iso.axes.contains_key("tokens")
        );
        let ladder = read("ladder.toml");
        assert!(ladder.linked.values().all(|v| v.len() == 3) && ladder.varied("tokens_per_parameter"));
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
        assert_eq!(name_part("data.mix[0].weight", &toml::Value::Float(0.5)), "mix0-weight-0.5");
        assert_eq!(name_part("data.weight", &toml::Value::Float(0.5)), "weight-0.5");
        assert_eq!(name_part("data.phases[0].from_step", &toml::Value::Integer(800)), "phases0-from-step-800");
        let weights = toml::Value::Array(vec![toml::Value::Float(0.2), toml::Value::Float(0.8)]);
        assert_eq!(name_part("data.phases[0].weights", &weights), "phases0-weights-0.2-0.8");
        let wsd: toml::Table = "min_ratio = 0.0\nkind = \"wsd\"\ndecay_fraction = 0.2\n".parse().unwrap();
        let wsd = name_part("optim.decay", &toml::Value::Table(wsd));
        assert_eq!(wsd, "decay-wsd-decay-fraction-0.2-min-ratio-0.0");
        assert_eq!(sh_quote("runs/a-1/config.toml"), "runs/a-1/config.toml");
        assert_eq!(sh_quote("my sweep/it's"), "'my sweep/it'\\''s'");
    }
}
