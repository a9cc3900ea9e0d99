//! What a run's `config.toml` says about its result: which experiment it is (a key that the runs of
//! one config share, its seed and folder left out: repeats of a config are one point of a fit, not
//! independent ones) and how its loss was measured (the settings two runs must share for their losses
//! to be comparable).

use crate::train::config::{BscSection, LossSection, TrainConfig, ValSection};

/// Settings that do not change what a run computes, only where it lives, what it logs, checkpoints
/// and samples, and how its work is split (`*`: the whole section). The seed is here too: runs of a
/// config with other seeds are repeats of one experiment.
const NOT_THE_EXPERIMENT: [(&str, &str); 15] = [
    ("run", "dir"),
    ("run", "seed"),
    ("run", "log_every"),
    ("run", "peak_tflops"),
    ("run", "device"),
    ("run", "recompute"),
    ("run", "gpu_memory_check"),
    ("run", "stall_timeout_s"),
    ("data", "micro_batch"),
    ("data", "workers"),
    ("val", "every"),
    // (more validation sets beside val.dir, whose loss is the one fitted; with `--val-set` the set's
    // folder is the measurement's `val.dir`)
    ("val", "sets"),
    ("checkpoint", "*"),
    ("sample", "*"),
    ("dist", "*"),
];

/// Whether a change of config key `key` (dotted, as `config_changes` names it) leaves what a run
/// computes as it was: one of [`NOT_THE_EXPERIMENT`] but the seed, the folder (another seed is another
/// run of the experiment, another folder another run) and the validation sets (their losses).
pub fn leaves_the_result(key: &str) -> bool {
    let (section, rest) = key.split_once('.').unwrap_or((key, ""));
    let under = |k: &str| rest == k || rest.strip_prefix(k).is_some_and(|r| r.starts_with(['.', '[']));
    // (a validation set's folder is the measurement `--val-set` fits: not the sweep's to move)
    !matches!(key, "run.seed" | "run.dir")
        && !key.starts_with("val.sets")
        && NOT_THE_EXPERIMENT.iter().any(|&(s, k)| s == section && (k == "*" || under(k)))
}

/// The settings besides the data that a validation (or training) loss depends on (train/val.rs):
/// runs that differ in one are not fitted together. `bsc.*` are the self-correction the loss was
/// measured with: `val.p_max` and `val.apply_layers` where validation sets them.
pub const MEASUREMENT: [&str; 9] = [
    "dataset",
    "d",
    "val.dir",
    "val.max_rows",
    "val.seed",
    "loss.reweight_by_scale",
    "loss.label_smoothing",
    "bsc.p_max",
    "bsc.apply_layers",
];

/// A run's identity as an experiment and the settings its loss was measured with.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The config without [`NOT_THE_EXPERIMENT`], in a canonical text (`None`: no readable
    /// `config.toml`, so the run is a point of its own).
    pub experiment: Option<String>,
    /// `(setting, value)` for each of [`MEASUREMENT`]; `?` where the files do not say.
    pub measured: Vec<(&'static str, String)>,
    /// `run.seed` (`None`: not readable): repeats of an experiment with one seed are one run twice.
    pub seed: Option<i64>,
}

impl Settings {
    /// The validation set's folder told apart by the `fingerprint` of what it held when the run validated
    /// on it (its newest checkpoint's record): a set rebuilt in place under one path measures
    /// differently.
    pub fn with_val_fingerprint(mut self, fingerprint: Option<String>) -> Settings {
        let dir = self.measured.iter_mut().find(|(n, v)| *n == "val.dir" && v != "none" && v != "?");
        if let (Some((_, dir)), Some(f)) = (dir, fingerprint) {
            *dir = format!("{dir} (fingerprint {f})");
        }
        self
    }

    pub fn get(&self, name: &str) -> &str {
        self.measured.iter().find(|(n, _)| *n == name).map_or("?", |(_, v)| v.as_str())
    }

    /// "dataset F (d = D), validation on DIR": what the losses are measured on, in words.
    pub fn describe(&self) -> String {
        format!("dataset {} (d = {}), validation on {}", self.get("dataset"), self.get("d"), self.get("val.dir"))
    }

    /// The settings where `self` differs from `other`: `name = ours (fitted: theirs)`.
    pub fn differences(&self, other: &Settings) -> Vec<String> {
        let theirs = |n: &str| other.get(n).to_string();
        self.measured
            .iter()
            .filter(|(n, v)| *v != theirs(n))
            .map(|(n, v)| format!("{n} = {v} (fitted: {})", theirs(n)))
            .collect()
    }
}

/// The config's table with every default filled in (parsed as a [`TrainConfig`] where it is one), the
/// model's shape among them: a key the config leaves to `model.preset` holds the preset's value, so a
/// run that writes the preset's own value out is the same experiment. Else the table as written.
pub fn normalised(text: &str) -> Option<toml::Table> {
    let filled = toml::from_str::<TrainConfig>(text).ok().and_then(|mut cfg| {
        if let Ok(p) = crate::model::ModelConfig::named_preset(&cfg.model.preset) {
            let m = &mut cfg.model;
            m.depth.get_or_insert(p.depth);
            m.embed_dim.get_or_insert(p.embed_dim);
            m.num_heads.get_or_insert(p.num_heads);
            m.mlp_ratio.get_or_insert(p.mlp_ratio);
            m.apply_spatial_patchify.get_or_insert(p.apply_spatial_patchify);
            m.drop_path_rate.get_or_insert(p.drop_path_rate);
        }
        toml::to_string(&cfg).ok()
    });
    filled.and_then(|t| t.parse().ok()).or_else(|| text.parse().ok())
}

/// The model keys a run's shape comes from, as `derived.json`'s resolved model names them.
const SHAPE: [&str; 6] = ["depth", "embed_dim", "num_heads", "mlp_ratio", "drop_path_rate", "apply_spatial_patchify"];

/// A (normalised) config with its model's shape as the run trained it (`derived.json`'s `model`, where
/// it records one), over what [`normalised`] filled in from the preset this build has: a preset whose
/// value changed between builds does not make runs of the old one compare as the new one's.
pub fn as_trained(table: &toml::Table, derived: &serde_json::Value) -> toml::Table {
    let mut t = table.clone();
    let Some(model) = t.get_mut("model").and_then(toml::Value::as_table_mut) else { return t };
    for key in SHAPE {
        let trained = match &derived["model"][key] {
            serde_json::Value::Number(n) if n.is_u64() => n.as_u64().map(|v| toml::Value::Integer(v as i64)),
            serde_json::Value::Number(n) => n.as_f64().map(toml::Value::Float),
            serde_json::Value::Bool(b) => Some(toml::Value::Boolean(*b)),
            _ => None,
        };
        if let Some(v) = trained {
            model.insert(key.to_string(), v);
        }
    }
    t
}

/// A value as text: integers as the numbers they are (`4` and `4.0` alike), tables with sorted keys.
fn canonical(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => format!("{}", *i as f64),
        toml::Value::Float(f) => format!("{f}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        toml::Value::Table(t) => {
            let mut kv: Vec<(&String, &toml::Value)> = t.iter().collect();
            kv.sort_by(|a, b| a.0.cmp(b.0));
            format!("{{{}}}", kv.iter().map(|(k, v)| format!("{k}={}", canonical(v))).collect::<Vec<_>>().join(","))
        }
    }
}

/// A run's peak learning rate from its `config.toml`: `optim.lr`, or `optim.lr_per_256` (upstream's
/// `tblr`) scaled to `data.global_batch`.
pub fn peak_lr(config: &toml::Table) -> Option<f64> {
    let num = |section: &str, key: &str| {
        let v = config.get(section)?.get(key)?;
        v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
    };
    let per_256 =
        || Some(crate::train::config::lr_of_per_256(num("optim", "lr_per_256")?, num("data", "global_batch")?));
    num("optim", "lr").or_else(per_256)
}

/// The settings a learning-rate sweep varies: the rate, however it is given.
pub const LEARNING_RATE: [(&str, &str); 2] = [("optim", "lr"), ("optim", "lr_per_256")];

/// The experiment a (normalised) config is: its canonical text without [`NOT_THE_EXPERIMENT`] and
/// the settings in `also` (a learning-rate sweep leaves out `optim.lr`).
pub fn experiment(table: &toml::Table, also: &[(&str, &str)]) -> String {
    let mut t = table.clone();
    for &(section, key) in NOT_THE_EXPERIMENT.iter().chain(also) {
        if key == "*" {
            t.remove(section);
        } else if let Some(s) = t.get_mut(section).and_then(|s| s.as_table_mut()) {
            s.remove(key);
        }
    }
    canonical(&toml::Value::Table(t))
}

/// A run's (normalised) config as if it validated on `val_dir` alone, `rows` rows of it: how
/// `infinity eval --val DIR` measured it.
pub fn validating_on(table: &toml::Table, val_dir: &str, rows: u64) -> toml::Table {
    let mut t = table.clone();
    let val = t.entry("val").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(v) = val.as_table_mut() {
        v.insert("dir".into(), toml::Value::String(val_dir.into()));
        v.insert("max_rows".into(), toml::Value::Integer(rows as i64));
        v.remove("sets");
    }
    t
}

/// A run's (normalised) config as measuring `rows` rows of its validation set: the rows its validation
/// read (`val.jsonl` records them), which a set smaller than `val.max_rows` makes fewer than the setting.
pub fn measuring_rows(table: &toml::Table, rows: u64) -> toml::Table {
    let mut t = table.clone();
    let val = t.entry("val").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(v) = val.as_table_mut() {
        v.insert("max_rows".into(), toml::Value::Integer(rows as i64));
    }
    t
}

/// The settings of a run's (normalised) `config.toml`, `None` where it is unreadable, with
/// `derived.json`'s dataset fingerprint and `d`; its validation loss is `val_set`'s where one is named
/// (one of `val.sets`, by name), else `val.dir`'s.
pub fn read(table: Option<&toml::Table>, derived: &serde_json::Value, val_set: Option<&str>) -> Settings {
    let experiment = table.map(|t| experiment(&as_trained(t, derived), &[]));
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "?".to_string(),
        v => v.to_string(),
    };
    // a setting the config leaves out has its default (an unreadable config: `?`)
    let (val, loss, bsc) = (ValSection::default(), LossSection::default(), BscSection::default());
    let setting = |section: &str, key: &str, default: String| -> String {
        let Some(t) = table else { return "?".into() };
        match t.get(section).and_then(|s| s.get(key)) {
            Some(toml::Value::String(s)) => s.clone(),
            Some(v) => canonical(v),
            None => default,
        }
    };
    let val_dir = match val_set {
        None => setting("val", "dir", "none".into()),
        // (the named set's folder; a run without it is measured otherwise)
        Some(_) if table.is_none() => "?".into(),
        Some(name) => table
            .and_then(|t| t.get("val")?.get("sets")?.as_array().cloned())
            .into_iter()
            .flatten()
            .filter_map(|s| s.try_into::<crate::train::config::ValSet>().ok())
            .find(|s| s.name() == name)
            .map_or("none".into(), |s| s.dir.display().to_string()),
    };
    // (one folder however its path was written: `runs/../val`, `/abs/val`, `val/`)
    let val_dir = match val_dir.as_str() {
        "none" | "?" => val_dir,
        dir => crate::train::config::where_it_leads(std::path::Path::new(dir))
            .map_or_else(|| dir.to_string(), |p| p.display().to_string()),
    };
    // without validation the fits take the training loss, which the validation settings do not touch
    let val_setting = |key: &str, default: String| match val_dir.as_str() {
        "none" => "none".to_string(),
        _ => setting("val", key, default),
    };
    // the self-correction the loss was measured with: validation's own where it sets one (`val.p_max`,
    // `val.apply_layers`), else the training's
    let measured_bsc = |key: &str, default: String| {
        let own = (val_dir != "none").then(|| setting("val", key, String::new())).filter(|v| !v.is_empty());
        own.unwrap_or_else(|| setting("bsc", key, default))
    };
    // (a mix's training loss is measured on its datasets as drawn: by their weights, as shares (the
    // batches per epoch move with the global batch); without weights the joined fingerprint says all)
    let weights: Option<Vec<f64>> =
        derived["mix"].as_array().and_then(|parts| parts.iter().map(|p| p["weight"].as_f64()).collect());
    let shares = |w: &[f64]| {
        let sum: f64 = w.iter().sum();
        w.iter().map(|x| format!("{:.3}", x / sum)).collect::<Vec<String>>().join(":")
    };
    let mut dataset = match weights.filter(|w| w.iter().sum::<f64>() > 0.0) {
        Some(w) => format!("{} mixed {}", text(&derived["dataset"]["fingerprint"]), shares(&w)),
        None => text(&derived["dataset"]["fingerprint"]),
    };
    // (and so by its phases: another weighting from another step on; one set as a share of the run's
    // steps is the same phase in runs of any length)
    for p in derived["mix_phases"].as_array().into_iter().flatten() {
        let w: Vec<f64> = p["weights"].as_array().into_iter().flatten().filter_map(|x| x.as_f64()).collect();
        let from = match p["from_fraction"].as_f64() {
            Some(f) => format!("from {f} of the steps"),
            None => format!("from step {}", text(&p["from_step"])),
        };
        dataset.push_str(&format!(", {from} {}", shares(&w)));
    }
    let mut measured = vec![
        ("dataset", dataset),
        ("d", text(&derived["model"]["d"])),
        ("val.max_rows", val_setting("max_rows", canonical(&(val.max_rows as i64).into()))),
        ("val.seed", val_setting("seed", canonical(&(val.seed as i64).into()))),
        ("loss.reweight_by_scale", setting("loss", "reweight_by_scale", loss.reweight_by_scale.to_string())),
        ("loss.label_smoothing", setting("loss", "label_smoothing", canonical(&loss.label_smoothing.into()))),
        ("bsc.p_max", measured_bsc("p_max", canonical(&bsc.p_max.into()))),
        ("bsc.apply_layers", measured_bsc("apply_layers", canonical(&(bsc.apply_layers as i64).into()))),
        ("val.dir", val_dir),
    ];
    // in MEASUREMENT's order
    measured.sort_by_key(|(n, _)| MEASUREMENT.iter().position(|m| m == n));
    let seed = table.and_then(|t| t.get("run")?.get("seed")?.as_integer());
    Settings { experiment, measured, seed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(config: &str) -> Settings {
        read(
            normalised(config).as_ref(),
            &serde_json::json!({ "dataset": { "fingerprint": "f" }, "model": { "d": 32 } }),
            None,
        )
    }

    #[test]
    fn seeds_folders_and_logging_are_not_the_experiment() {
        let a = settings("[run]\ndir = \"a\"\nseed = 1\nlog_every = 5\n[optim]\nlr = 0.003\n[checkpoint]\nevery = 5\n");
        let b = settings("[run]\ndir = \"b\"\nseed = 2\nlog_every = 9\n[optim]\nlr = 3e-3\n");
        assert!(a.experiment.is_some() && a.experiment == b.experiment, "{:?} vs {:?}", a.experiment, b.experiment);
        let c = settings("[run]\ndir = \"a\"\nseed = 1\n[optim]\nlr = 0.01\n");
        assert_ne!(a.experiment, c.experiment, "the learning rate is the experiment");
        assert_eq!(a.get("val.dir"), "none");
        assert_eq!(a.get("val.max_rows"), "none", "no validation: its settings do not matter");
        assert_eq!(a.get("bsc.p_max"), "0.3", "defaults filled in");
    }

    #[test]
    fn logging_and_checkpoint_settings_leave_the_result() {
        for key in ["run.log_every", "val.every", "checkpoint.every", "sample.cfg", "data.micro_batch", "dist.zero1"] {
            assert!(leaves_the_result(key), "{key}");
        }
        for key in ["run.seed", "run.dir", "run.steps", "optim.lr", "val.dir", "val.sets[0].dir", "data.workers_x"] {
            assert!(!leaves_the_result(key), "{key}");
        }
    }

    /// A shape the config writes out is the same experiment as the preset's own value left to it; another
    /// value is another experiment.
    #[test]
    fn a_model_key_at_its_presets_value_is_the_same_experiment() {
        let run = "[run]\ndir = \"a\"\nseed = 1\nsteps = 10\n[data]\ndir = \"d\"\nglobal_batch = 8\nmicro_batch = 8\n[optim]\nlr = 0.003\n";
        let tiny = crate::model::ModelConfig::named_preset("tiny").unwrap();
        let with =
            |model: &str| settings(&format!("{run}[model]\npreset = \"tiny\"\nconditioning = \"class\"\n{model}"));
        let (left, written) = (with(""), with(&format!("num_heads = {}\ndepth = {}\n", tiny.num_heads, tiny.depth)));
        assert!(left.experiment.as_deref().is_some_and(|e| e.contains("num_heads")), "{:?}", left.experiment);
        assert_eq!(left.experiment, written.experiment);
        assert_ne!(left.experiment, with(&format!("num_heads = {}\n", tiny.num_heads * 2)).experiment);
        // the shape as the run trained it (derived.json) over the preset this build has (tiny: no drop
        // path): a run of a build whose preset gave 0.05 is one with 0.05 written out, not one without
        let trained = |model: &str, drop: f64| {
            let derived =
                serde_json::json!({ "dataset": { "fingerprint": "f" }, "model": { "d": 32, "drop_path_rate": drop } });
            read(
                normalised(&format!("{run}[model]\npreset = \"tiny\"\nconditioning = \"class\"\n{model}")).as_ref(),
                &derived,
                None,
            )
        };
        let old_build = trained("", 0.05);
        assert_eq!(old_build.experiment, trained("drop_path_rate = 0.05\n", 0.05).experiment);
        assert_ne!(old_build.experiment, trained("", 0.0).experiment);
    }

    /// A config `infinity train` reads has its defaults filled in: one that writes a default out is the
    /// same experiment as one that leaves it to the default.
    #[test]
    fn a_training_config_is_compared_with_its_defaults() {
        let base = "[run]\ndir = \"a\"\nseed = 1\nsteps = 30\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n[data]\ndir = \"d\"\n\
                    global_batch = 8\nmicro_batch = 8\n[optim]\nlr = 0.003\n";
        let (a, b) = (settings(base), settings(&format!("{base}[bsc]\np_max = 0.3\n[val]\nevery = 7\n")));
        assert!(toml::from_str::<TrainConfig>(base).is_ok(), "a valid training config");
        assert!(a.experiment.is_some() && a.experiment == b.experiment);
        let c = settings(&base.replace("steps = 30", "steps = 31"));
        assert_ne!(a.experiment, c.experiment);
    }

    /// A learning-rate sweep over `optim.lr_per_256` (upstream's `tblr`) is one too: the rate is the peak
    /// it gives at the run's batch, and its runs are one experiment but for it.
    #[test]
    fn a_rate_per_256_samples_is_the_peak_it_gives() {
        let config = |rate: &str| -> toml::Table {
            normalised(&format!("[run]\nseed = 1\n[data]\nglobal_batch = 64\n[optim]\n{rate}\n")).unwrap()
        };
        assert_eq!(peak_lr(&config("lr_per_256 = 4e-3")), Some(1e-3));
        assert_eq!(peak_lr(&config("lr = 2e-3")), Some(2e-3));
        assert_eq!(peak_lr(&config("clip = 1.0")), None);
        let key = |rate: &str| experiment(&config(rate), &LEARNING_RATE);
        assert_eq!(key("lr_per_256 = 4e-3"), key("lr_per_256 = 8e-3"));
        assert_ne!(experiment(&config("lr_per_256 = 4e-3"), &[]), experiment(&config("lr_per_256 = 8e-3"), &[]));
    }

    #[test]
    fn the_measurement_settings_are_compared() {
        let a = settings("[val]\ndir = \"/v\"\nmax_rows = 48\n[loss]\nlabel_smoothing = 0.1\n");
        let b = settings("[val]\ndir = \"/v\"\nmax_rows = 64\n");
        assert_eq!(a.get("val.max_rows"), "48");
        assert_eq!(a.get("val.seed"), "0");
        let diff = b.differences(&a);
        assert_eq!(diff, ["val.max_rows = 64 (fitted: 48)", "loss.label_smoothing = 0 (fitted: 0.1)"], "{diff:?}");
        assert_eq!(a.describe(), "dataset f (d = 32), validation on /v");
        // a self-correction ablation validated at one strength is measured alike
        let fixed = |p: f64| settings(&format!("[val]\ndir = \"/v\"\np_max = 0.2\n[bsc]\np_max = {p}\n"));
        assert!(fixed(0.1).differences(&fixed(0.3)).is_empty());
        assert_eq!(fixed(0.1).get("bsc.p_max"), "0.2");
        let own = |p: f64| settings(&format!("[val]\ndir = \"/v\"\n[bsc]\np_max = {p}\n"));
        assert_eq!(own(0.1).differences(&own(0.3)), ["bsc.p_max = 0.1 (fitted: 0.3)"]);
        // without validation the training loss is fitted, measured at the training's strength
        let unvalidated = settings("[val]\np_max = 0.2\n[bsc]\np_max = 0.1\n");
        assert_eq!(unvalidated.get("bsc.p_max"), "0.1");
        // a mix is measured on its datasets as drawn: another weighting is another measurement
        let mix = |w: [f64; 2]| {
            let parts = serde_json::json!([{ "weight": w[0] }, { "weight": w[1] }]);
            read(
                None,
                &serde_json::json!({ "dataset": { "fingerprint": "f" }, "model": { "d": 32 }, "mix": parts }),
                None,
            )
        };
        assert_eq!(mix([1.0, 1.0]).get("dataset"), "f mixed 0.500:0.500");
        assert!(mix([2.0, 2.0]).differences(&mix([1.0, 1.0])).is_empty(), "the same shares");
        assert_eq!(
            mix([3.0, 1.0]).differences(&mix([1.0, 1.0])),
            ["dataset = f mixed 0.750:0.250 (fitted: f mixed 0.500:0.500)"]
        );
        // and so is one of another phase
        let parts = serde_json::json!([{ "weight": 1.0 }, { "weight": 1.0 }]);
        let phases = serde_json::json!([{ "from_step": 90, "weights": [0.0, 2.0] }]);
        let derived = serde_json::json!({ "dataset": { "fingerprint": "f" }, "model": { "d": 32 }, "mix": parts,
            "mix_phases": phases });
        assert_eq!(read(None, &derived, None).get("dataset"), "f mixed 0.500:0.500, from step 90 0.000:1.000");
        // a phase from a share of the steps: the same in runs of any length
        let at = |step: u64| {
            let phases = serde_json::json!([{ "from_step": step, "from_fraction": 0.9, "weights": [0.0, 2.0] }]);
            let derived = serde_json::json!({ "dataset": { "fingerprint": "f" }, "model": { "d": 32 }, "mix": parts,
                "mix_phases": phases });
            read(None, &derived, None)
        };
        assert_eq!(at(90).get("dataset"), "f mixed 0.500:0.500, from 0.9 of the steps 0.000:1.000");
        assert!(at(90).differences(&at(180)).is_empty(), "a phase from 0.9 of 100 or of 200 steps");
    }
}
