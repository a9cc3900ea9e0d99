//! `infinity eval RUN_OR_CKPT [--val DIR] [--max-rows N] [--all] [--ema] [--out FILE]` (or `infinity eval
//! EXPORT_OR_WEIGHTS --config TOML …`): the validation
//! loss and bit accuracy of checkpoints, measured as training measures them (`val.*`: the same rows, the
//! same fixed self-correction noise), on the run's validation sets or another dataset. For re-measuring
//! a finished sweep on a larger or new validation set without training again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use infinity_data::{Checksums, Dataset};
use serde_json::json;

use crate::model::{Acts, Layout};
use crate::train::checkpoint::{self, load_model, CheckpointModel, TrainState, CONFIG_FILE, STATE_FILE};
use crate::train::compute::{Compute, DeviceRequest};
use crate::train::config::{DeviceChoice, Precision, TrainConfig};
use crate::train::dist::Dist;
use crate::train::val::Validator;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run folder (its newest complete checkpoint, or every one with --all) or a checkpoint folder;
    /// or, with --config, an export folder or a bare weights file.
    path: PathBuf,
    /// For an export folder or a bare weights file (which record no run): the training config whose
    /// validation settings (`val.*`, or --val), training dataset and seed the measurement takes, as a run
    /// of it would measure (a fine-tune's config, to score its source). A bare file's model is shaped by
    /// it too. A checkpoint or run folder is measured with its own run's, as it trained (the environment's
    /// `INF__…` variables do not apply to it).
    #[arg(long, value_name = "TOML")]
    config: Option<PathBuf>,
    /// Override a value of --config, as `infinity train --set` does (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    set: Vec<String>,
    /// The validation dataset (default: the run's `val.dir` and `val.sets`). It must carry the training
    /// data's bits (its tokenizer, `d`) and the condition the model takes (its classes, or text features
    /// of its width with captions no longer than its `text_maxlen`).
    #[arg(long, value_name = "DIR")]
    val: Option<PathBuf>,
    /// The name of --val's set in the results (`set` in the --out lines): with `--out RUN/eval.jsonl`,
    /// `infinity scaling --val-set NAME` fits it for runs whose `val.jsonl` has no set of that name.
    #[arg(long, value_name = "NAME", requires = "val", value_parser = crate::cli::sweep::set_name)]
    name: Option<String>,
    /// Rows evaluated, the first of the dataset (default: the run's `val.max_rows`).
    #[arg(long, value_name = "N", value_parser = infinity_launcher::positive())]
    max_rows: Option<usize>,
    /// Every complete checkpoint of the run, oldest first (a loss curve on the new set).
    #[arg(long)]
    all: bool,
    /// The checkpoints' moving average of the weights (`optim.ema_decay`) instead of the weights.
    #[arg(long)]
    ema: bool,
    /// Also append each result to FILE as a JSON line (checkpoint, step, set, its folder and fingerprint,
    /// loss, bit_acc, rows, and the run's samples_seen, tokens_seen and flops_seen at the checkpoint).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The run's training dataset, where its config's `data.dir` no longer leads to it (moved): a
    /// validation set is checked against its bits and conditions.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where the model runs: `auto`, `cpu` or `cuda`.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Rows per forward pass (default: the run's `data.micro_batch`, 16 where it is "auto"): fewer for a
    /// smaller GPU than the run's. The loss is the same mean over the rows, to rounding.
    #[arg(long, value_name = "N", value_parser = infinity_launcher::positive())]
    micro_batch: Option<usize>,
}

/// Micro-batch rows where the run's is chosen at start (`"auto"`): the loss is a mean over rows either way.
const MICRO_BATCH: usize = 16;

pub fn run(a: EvalArgs) -> Result<ExitCode> {
    // (before anything is loaded)
    if let Some(p) = &a.out {
        check_out(p)?;
    }
    // (an export or a weights file: the one model, measured as a run of --config would measure it)
    let weights = match &a.config {
        Some(config) => Some(weights_and_config(&a, config)?),
        None => None,
    };
    // (an export's step as it records it; a bare weights file's is not known; the folders resolved
    // while they are there: a run training on may prune them before their --out lines are written)
    let listed = || -> Result<Vec<(Option<u64>, PathBuf)>> {
        let mut found = checkpoints(&a.path, a.all)?;
        // (a run that took up `optim.ema_decay` on a resume: its checkpoints before hold no average)
        let without_ema = |d: &PathBuf| !d.join(checkpoint::EMA_FILE).is_file();
        if a.all && a.ema && found.iter().any(|(_, d)| !without_ema(d)) {
            let (steps, with): (Vec<_>, Vec<_>) = found.into_iter().partition(|(_, d)| without_ema(d));
            if !steps.is_empty() {
                let steps: Vec<String> = steps.iter().map(|(s, _)| s.to_string()).collect();
                console_err!(
                    "warning: --ema: the checkpoints of steps {} hold no moving average: skipped",
                    steps.join(", ")
                );
            }
            found = with;
        }
        Ok(found.into_iter().map(|(step, dir)| (Some(step), crate::export::resolved(&dir))).collect())
    };
    // a checkpoint's model and, of a run's checkpoint, its state (what the run had seen), read together:
    // pruning may take the folder between the two
    let read = |dir: &Path| -> Result<(CheckpointModel, Option<TrainState>)> {
        Ok((load_model(dir, a.ema)?, Some(checkpoint::read_state(dir)?)))
    };
    let mut checkpoints: Vec<(Option<u64>, PathBuf)> = match &weights {
        Some((ck, _, _)) => vec![(ck.step, a.path.clone())],
        None => listed()?,
    };
    // (an export of the moving average holds it, `--ema` or not)
    let ema = weights.as_ref().map_or(a.ema, |(_, _, ema)| *ema);
    if a.all && a.path.join(STATE_FILE).is_file() {
        console_err!("warning: --all: {} is one checkpoint (give the run folder for all of them)", a.path.display());
    }
    // the run's config as it trained (the checkpoint keeps it), its validation settings overridden
    let vars: Vec<String> = crate::train::config::inf_vars().into_iter().map(|(k, _)| k).collect();
    if weights.is_none() && !vars.is_empty() {
        console_err!(
            "note: the run is measured with its config as it trained: {} in the environment do(es) not apply \
             (eval's flags set what it measures)",
            vars.join(", ")
        );
    }
    let (mut cfg, config, (first_model, first_state)) = match weights {
        Some((ck, cfg, _)) => (cfg, a.config.clone().expect("given"), (ck, None)),
        None => {
            let mut tries = 0;
            loop {
                let first = &checkpoints[0].1;
                let config = first.join(CONFIG_FILE);
                // (as it trained: without the environment's `INF__…` variables, and quietly: its warnings
                // were the training's to say)
                let loaded = TrainConfig::load_saved(&config)
                    .with_context(|| format!("the run's config {}", config.display()))
                    .and_then(|cfg| Ok((cfg, read(first)?)));
                match loaded {
                    Ok((cfg, ck)) => break (cfg, config, ck),
                    // (deleted since the listing by a run training on, `checkpoint.keep_last`: listed again)
                    Err(_) if pruned(first) && tries < 5 => {
                        console_err!("{}: gone since eval listed it (pruned?): listing again", first.display());
                        (tries, checkpoints) = (tries + 1, listed()?);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };
    let first = &checkpoints[0].1;
    // a run's eval.jsonl holds its own weights' losses: another run's (or its export's) is said now
    if let Some((out, theirs)) = a.out.as_deref().zip(weights_run(first)) {
        let here = out.parent().filter(|d| d.join("summary.json").is_file() || d.join("derived.json").is_file());
        let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
        if let Some(here) = here.filter(|h| theirs.exists() && !same(h, &theirs)) {
            console_err!(
                "warning: --out {}: in run {}'s folder, but the weights are run {}'s: `infinity scaling` takes a \
                 run's eval.jsonl lines of its own weights alone (write them to {}/eval.jsonl)",
                out.display(),
                here.display(),
                theirs.display(),
                theirs.display()
            );
        }
    }
    // (set on the config read, not as `--set` text: a folder named 2024 stays a path)
    if let Some(dir) = &a.val {
        ensure!(dir.join("manifest.json").is_file(), "--val {}: not a dataset (no manifest.json)", dir.display());
        // (absolute: the --out lines name the folder `infinity scaling` compares, wherever eval ran)
        let dir = std::path::absolute(dir).with_context(|| format!("--val {}", dir.display()))?;
        (cfg.val.dir, cfg.val.sets) = (Some(dir), Vec::new());
    }
    if let Some(n) = a.max_rows {
        cfg.val.max_rows = n;
    }
    if let Some(dir) = &a.data {
        cfg.data.dir = dir.clone();
    }
    if cfg.val.dir.is_none() {
        bail!("{}: the run has no validation set (val.dir): pass --val DIR", config.display());
    }
    let train = Dataset::open(&cfg.data.dir, Checksums::Skip).with_context(|| {
        let moved = if a.data.is_none() { "; moved? pass --data DIR" } else { "" };
        format!(
            "the run's training dataset {} (a validation set must carry its bits and conditions{moved})",
            cfg.data.dir.display()
        )
    })?;
    // (an export's or weights file's model is its own, whatever --config's model section says: a dataset
    // of other conditions would be scored against labels the model never learned)
    if a.config.is_some() {
        if let Some(why) = other_conditions(&first_model.model, &train.manifest) {
            bail!(
                "--config {}: its dataset {} {why}: pass --data with the dataset the model trained on (or one of its \
                 conditions)",
                config.display(),
                cfg.data.dir.display()
            );
        }
    }
    // (bits of another tokenizer mean other images: the validation set, which must share the training
    // data's tokenizer, would be refused for the wrong reason)
    let (saved, trained_dir) = (first_model.tokenizer.as_deref(), &first_model.data_dir);
    if let Some(why) = crate::infer::tokenizer_mismatch(saved, trained_dir, &cfg.data.dir, &train.manifest) {
        let which = match a.data.is_some() {
            true => "--data",
            false => "the run's training dataset (data.dir; replaced since?)",
        };
        bail!("{which} {}: {why}: pass --data with the run's training dataset", cfg.data.dir.display());
    }
    // (for a checkpoint of an earlier build, what its run had seen, recounted from the run's log)
    let flops_per_token =
        crate::train::TokenMix::of(&first_model.model, &train.manifest, cfg.data.global_batch).flops_per_token;
    let costs = crate::train::seen::bucket_costs(&first_model.model, &train.manifest, &flops_per_token);
    let micro_batch = a.micro_batch.or(cfg.data.micro_batch.samples()).unwrap_or(MICRO_BATCH);
    // (the run's own set, moved since: --val names where it is now)
    let gone = cfg.val.dir.as_ref().is_some_and(|d| a.val.is_none() && !d.exists());
    let validator = match (Validator::new(&cfg, &first_model.model, &train, micro_batch), gone) {
        // (as context, so the exit code of what failed stands)
        (Err(e), true) => return Err(e.context("the run's validation set is not there (moved? pass --val DIR)")),
        (validator, _) => validator?.expect("val.dir is set"),
    };
    let val_dir = cfg.val.dir.as_ref().expect("set").display();
    let main_set = match (&a.val, &a.name) {
        (Some(_), Some(n)) => format!("--val {val_dir} ({n})"),
        (Some(_), None) => format!("--val {val_dir}"),
        (None, _) => format!("val.dir {val_dir}"),
    };
    for (name, rows) in validator.rows() {
        console!("{}: {rows} rows", name.map_or_else(|| main_set.clone(), String::from));
    }
    for w in validator.warnings() {
        console_err!("warning: {w}");
    }
    let (lay, model) = (Layout::new(&first_model.model), first_model.model.clone());
    let bf16 = first_model.precision == Precision::Bf16;
    let want =
        DeviceRequest { setting: "--device", device: a.device, bf16, recompute: false, trains: false, deferred: false };
    let mut compute = Compute::open_as(&want, &first_model.model, &lay)?;
    let (mut dist, mut acts) = (Dist::solo(), Acts::default());
    let mut out = match &a.out {
        Some(p) => Some(open_out(p).with_context(|| format!("opening {}", p.display()))?),
        None => None,
    };
    // (each set's contents, for the --out lines: a folder rebuilt in place is another set)
    let prints = validator.fingerprints();
    // (the run's own sets rebuilt since a checkpoint validated on them, said once each)
    let mut said_rebuilt = std::collections::BTreeSet::new();
    // (the first is read already, with its state: it is always measured)
    let mut loaded = Some((first_model, first_state));
    for (step, dir) in &checkpoints {
        let (ck, state) = match loaded.take() {
            Some(read) => read,
            None => match read(dir) {
                Ok(read) => read,
                // (pruned meanwhile by a run training on: `keep_last`)
                Err(_) if a.all && pruned(dir) => {
                    console_err!("warning: {}: gone since eval listed it (pruned?): skipped", dir.display());
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        // (one run's checkpoints share one model: the validator's rows were checked against it)
        ensure!(ck.model == model, "{}: another model than {}'s", dir.display(), first.display());
        let recorded = state.as_ref().and_then(|s| Some((s.step, s.val_sets.as_ref()?)));
        if let Some((at, saved)) = recorded.filter(|_| a.val.is_none()) {
            for (key, dir, changes) in validator.differing(saved) {
                if said_rebuilt.insert(key.clone()) {
                    console_err!(
                        "warning: {key} {}: not the set the checkpoint of step {at} validated on ({changes}): \
                         these losses are not comparable with those of the run's val.jsonl",
                        dir.display()
                    );
                }
            }
        }
        // (what the run had trained on at the checkpoint: the x axes of its curves; null where unknown,
        // as for an export or a weights file)
        let seen = state.and_then(|state| {
            let without = "its --out lines have no samples_seen, tokens_seen or flops_seen";
            let recount = |run| crate::train::seen::Seen::recounted(run, state.step, &costs, without);
            match (state.seen, checkpoint::run_folder_of(dir)) {
                (Some(seen), _) => Some(seen),
                (None, Some(run)) if out.is_some() => recount(run),
                (None, _) => None,
            }
        });
        let (vm, more) = validator.run(&cfg, (&ck.model, &lay), &ck.params, &mut dist, &mut compute, &mut acts)?;
        let weights = if ema { " (moving average)" } else { "" };
        let at = step.map_or_else(|| dir.display().to_string(), |s| format!("step {s}"));
        // (the run whose weights these are, for every line of this checkpoint)
        let run = weights_run(dir).map(|r| crate::export::resolved(&r));
        let mut results = vec![(a.name.clone(), vm)];
        results.extend(more.into_iter().map(|(n, m)| (Some(n), m)));
        for (i, (name, m)) in results.into_iter().enumerate() {
            let set = name.as_deref().map_or(String::new(), |n| format!(" [{n}]"));
            // (the first result is val.dir's, or --val's, whatever --name calls it)
            let key = crate::train::val::set_key(name.as_deref().filter(|_| i > 0));
            console!(
                "{at}{weights}{set}: val loss {:.5}, bit accuracy {:.4} ({})",
                m.loss,
                m.bit_acc,
                crate::cli::plural(m.rows, "row")
            );
            if let Some(f) = out.as_mut() {
                let line = json!({
                    "checkpoint": crate::export::resolved(dir),
                    "run": run,
                    "step": step,
                    "ema": ema,
                    "set": name,
                    "val_dir": val_dir_of(&cfg, name.as_deref().filter(|_| a.name.is_none())),
                    "fingerprint": prints.get(&key),
                    "loss": m.loss,
                    "bit_acc": m.bit_acc,
                    "rows": m.rows,
                    "samples_seen": seen.map(|s| s.samples),
                    "tokens_seen": seen.map(|s| s.tokens),
                    "flops_seen": seen.map(|s| s.flops),
                });
                // (one write: a kill leaves a whole line or a torn one, never a line without its end)
                f.write_all(format!("{line}\n").as_bytes()).context("writing --out")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The model of an export folder or a bare weights file (`a.path`), the training config `config` (with
/// `--set`) that measures it, and whether the weights are the moving average; a checkpoint or run
/// folder is refused (its run's config measures it).
fn weights_and_config(a: &EvalArgs, config: &Path) -> Result<(CheckpointModel, TrainConfig, bool)> {
    if a.path.join(STATE_FILE).is_file() || !checkpoint::complete(&a.path).is_empty() {
        bail!(
            "--config {}: {} is a checkpoint or run folder, measured with its own run's config (leave --config out; \
             --val DIR for another set)",
            config.display(),
            a.path.display()
        );
    }
    ensure!(!a.all, "--all: {} is one set of weights (--all takes a run folder)", a.path.display());
    let cfg = TrainConfig::load(config, &a.set).with_context(|| format!("--config {}", config.display()))?;
    // (an export's weights file is measured as its folder is: config.json shapes the model)
    let export_of_file = a.path.parent().filter(|p| a.path.is_file() && crate::export::read_export(p).is_some());
    let path = export_of_file.unwrap_or(&a.path);
    let (ck, ema) = match crate::export::read_export(path) {
        Some(_) => {
            let export = crate::export::load_export(path, a.ema)?;
            let model_sets: Vec<&str> = a.set.iter().map(String::as_str).filter(|s| s.starts_with("model.")).collect();
            if !model_sets.is_empty() {
                console_err!(
                    "warning: {}: an export's model is its config.json's: --set {} not applied",
                    path.display(),
                    model_sets.join(", --set ")
                );
            }
            (export.model, export.ema)
        }
        None => {
            let spec = checkpoint::ModelSpec { config, overrides: &a.set, data: a.data.as_deref() };
            (checkpoint::load_model_file(&a.path, &spec, a.ema)?, a.ema)
        }
    };
    Ok((ck, cfg, ema))
}

/// How the conditions of dataset `m` differ from those model `mc` takes (`None`: they are its own).
fn other_conditions(mc: &crate::model::ModelConfig, m: &infinity_data::Manifest) -> Option<String> {
    use crate::model::Conditioning;
    let (class, text) = (m.conditions.class.as_ref(), m.conditions.text.as_ref());
    match &mc.conditioning {
        Conditioning::Class { num_classes } => match class {
            Some(c) if c.num_classes as usize == *num_classes => None,
            Some(c) => Some(format!("has {} classes, the model {num_classes}", c.num_classes)),
            None => Some(format!("has no classes, the model {num_classes}")),
        },
        Conditioning::Text => match text {
            Some(t) if t.width as usize == mc.text_channels => None,
            Some(t) => Some(format!("has text features {} wide, the model takes {}", t.width, mc.text_channels)),
            None => Some("has no text features, the model is text-conditioned".into()),
        },
    }
}

/// Refuse an `--out` that eval's lines would damage: a run's or dataset's own file (its logs, which
/// `infinity scaling` reads as training's, its config), a file in a checkpoint or dataset folder (a
/// checkpoint's weights appended to fail their checksum), or a file that is not JSON lines already.
fn check_out(p: &Path) -> Result<()> {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    const OWN: [&str; 7] =
        ["metrics.jsonl", "val.jsonl", "summary.json", "derived.json", "config.toml", "state.json", "manifest.json"];
    let folder = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let kept = [checkpoint::DONE, STATE_FILE, infinity_data::manifest::MANIFEST_FILE];
    if OWN.contains(&name.as_str()) || kept.iter().any(|f| folder.join(f).is_file()) {
        bail!(
            "--out {}: a run's, checkpoint's or dataset's own file (or one in such a folder), which eval's lines would \
             damage: give a file of its own, such as RUN/eval.jsonl",
            p.display()
        );
    }
    // (its first line, read up to a bound: a file of weights is gigabytes)
    if let Ok(f) = std::fs::File::open(p) {
        use std::io::Read;
        let mut head = Vec::new();
        f.take(1 << 16).read_to_end(&mut head).with_context(|| format!("reading --out {}", p.display()))?;
        let first = head.split(|&b| b == b'\n').find(|l| !l.is_empty());
        if first.is_some_and(|l| !serde_json::from_slice::<serde_json::Value>(l).is_ok_and(|v| v.is_object())) {
            bail!("--out {}: an existing file that is not JSON lines, which eval appends to", p.display());
        }
    }
    Ok(())
}

/// The run whose weights `dir` holds: a checkpoint's run folder, or the one an export records as its
/// source (`None`: a weights file, an export of initial weights).
fn weights_run(dir: &Path) -> Option<PathBuf> {
    checkpoint::run_folder_of(dir).map(Path::to_path_buf).or_else(|| {
        let source = crate::export::read_export(dir)?.checkpoint?;
        checkpoint::run_folder_of(&source).map(Path::to_path_buf)
    })
}

/// The folder of the run's validation set `name` (`val.sets`), or of `val.dir` (`None`, or `--val`).
fn val_dir_of(cfg: &TrainConfig, name: Option<&str>) -> Option<PathBuf> {
    match name {
        Some(n) => cfg.val.sets.iter().find(|s| s.name() == n).map(|s| s.dir.clone()),
        None => cfg.val.dir.clone(),
    }
}

/// `--out` opened to append, a line a kill or a full disk left torn (no newline) ended first, so that it
/// stays a line of its own (which readers skip) instead of swallowing the next one.
/// A file that cannot be read back or has no end to seek to (write-only, a pipe, `/dev/stdout`) is
/// appended to as it is.
fn open_out(p: &Path) -> std::io::Result<std::fs::File> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::OpenOptions::new().create(true).read(true).append(true).open(p) else {
        return std::fs::OpenOptions::new().create(true).append(true).open(p);
    };
    let mut last = [0u8];
    let torn = f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() && last[0] != b'\n';
    if torn {
        f.write_all(b"\n")?;
    }
    Ok(f)
}

/// Whether checkpoint `dir`, complete when listed, is gone: pruning (`checkpoint.keep_last`) moves a
/// checkpoint's folder away whole, `DONE` with it.
fn pruned(dir: &Path) -> bool {
    !dir.join(checkpoint::DONE).is_file()
}

/// The checkpoints of `path`: a checkpoint folder alone, or a run folder's newest complete one (with
/// `all`, every complete one, oldest first), by step.
fn checkpoints(path: &Path, all: bool) -> Result<Vec<(u64, PathBuf)>> {
    ensure!(path.exists(), "{}: no such run or checkpoint folder", path.display());
    if path.join(STATE_FILE).is_file() {
        let dir = checkpoint::resolve(path)?;
        let step = checkpoint::read_state(&dir)?.step;
        return Ok(vec![(step, dir)]);
    }
    let mut found = checkpoint::complete(path);
    if found.is_empty() && (crate::export::read_export(path).is_some() || path.is_file()) {
        bail!(
            "{}: an export folder or weights file, which records no run: measure it with --config TOML, the \
             training config whose validation settings and dataset to take (a fine-tune's, to score its source)",
            path.display()
        );
    }
    ensure!(
        !found.is_empty(),
        "{}: no complete checkpoint (a run folder's checkpoints/step-N, or a checkpoint folder)",
        path.display()
    );
    if !all {
        found = found.split_off(found.len() - 1);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use crate::model::{Conditioning, ModelConfig};

    /// An export's or weights file's model against the dataset `--config` names: its classes or text
    /// width, else what differs.
    #[test]
    fn a_dataset_of_other_conditions_than_the_models_is_named() {
        let manifest = |conditions: serde_json::Value| -> infinity_data::Manifest {
            serde_json::from_value(serde_json::json!({
                "format": "infinity-bits", "format_version": 1, "d": 16, "bit_order": "",
                "tokenizer": { "name": "t", "file": null }, "conditions": conditions, "latent": null,
                "schedules": [], "shards": [], "total_rows": 0, "created_by": ""
            }))
            .unwrap()
        };
        let classes = |n: u32| manifest(serde_json::json!({ "class": { "num_classes": n } }));
        let text = manifest(serde_json::json!({
            "text": { "width": 64, "dtype": "bf16", "max_tokens": 8, "encoder": "e" }
        }));
        let mut mc = ModelConfig::preset("tiny").unwrap();
        mc.conditioning = Conditioning::Class { num_classes: 24 };
        assert_eq!(super::other_conditions(&mc, &classes(24)), None);
        assert_eq!(super::other_conditions(&mc, &classes(5)).unwrap(), "has 5 classes, the model 24");
        assert_eq!(super::other_conditions(&mc, &text).unwrap(), "has no classes, the model 24");
        (mc.conditioning, mc.text_channels) = (Conditioning::Text, 64);
        assert_eq!(super::other_conditions(&mc, &text), None);
        assert!(super::other_conditions(&mc, &classes(5)).unwrap().contains("has no text features"));
        mc.text_channels = 32;
        assert!(super::other_conditions(&mc, &text).unwrap().contains("text features 64 wide, the model takes 32"));
    }
}
