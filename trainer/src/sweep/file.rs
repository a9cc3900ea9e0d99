//! The sweep file: its format, the checks it gets before any run is expanded, and errors about a run's
//! config phrased in its terms (`[axes] KEY`, not the `--set KEY` the config loader names an override).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub base: PathBuf,
    pub out: PathBuf,
    #[serde(default = "one")]
    pub nproc_per_node: usize,
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub axes: BTreeMap<String, Vec<toml::Value>>,
    /// Values taken together: the `i`-th of every key makes one point (a size ladder: depth, width and
    /// heads), crossed with `[axes]`.
    #[serde(default)]
    pub linked: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    pub slurm: SlurmSection,
}

fn one() -> usize {
    1
}

/// Settings whose value is one table as a whole (a tagged choice: `{ kind = "cosine", … }`), not keys
/// to set one by one.
const WHOLE_TABLES: [&str; 1] = ["optim.decay"];

/// `[set]` by dotted key to each setting: `optim.lr = 1e-3` (a bare dotted key) and `[set.optim]` tables
/// are read by TOML as a table `optim`, which set as one override would replace the base config's whole
/// `[optim]` and meet the axes' `optim.*` in no fixed order.
fn leaf_keys(set: BTreeMap<String, toml::Value>) -> BTreeMap<String, toml::Value> {
    fn add(out: &mut BTreeMap<String, toml::Value>, key: String, value: toml::Value) {
        match value {
            // (an empty one stays, for `check` to refuse: read key by key it would vanish unsaid)
            toml::Value::Table(t) if !t.is_empty() && !WHOLE_TABLES.contains(&key.as_str()) => {
                for (k, v) in t {
                    add(out, format!("{key}.{k}"), v);
                }
            }
            v => {
                out.insert(key, v);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (k, v) in set {
        add(&mut out, k, v);
    }
    out
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
    /// Seconds before the time limit that SLURM sends SIGUSR1 (`--signal=USR1@S`): the time a task has
    /// to finish its step and write a checkpoint before it is killed.
    pub signal_s: Option<u64>,
    /// The agent's `--numa-binding` (`node`, `socket`, `exclusive`, `core-complex`): each rank's CPUs
    /// near its GPU, within the task's `cpus_per_node`.
    pub numa_binding: Option<String>,
}

/// SLURM's `--signal` lead time unless `[slurm] signal_s` sets one.
pub const DEFAULT_SIGNAL_S: u64 = 300;

impl SlurmSection {
    pub fn signal_s(&self) -> u64 {
        self.signal_s.unwrap_or(DEFAULT_SIGNAL_S)
    }

    /// The agent's `--grace-s`: the warning's lead time less a tenth of it (1 to 30 s), which the task
    /// keeps for itself (the agent's exit, the script's `scontrol requeue`). The agent's own default of
    /// 30 s would kill a stop checkpoint that takes longer, however early SLURM warned.
    pub fn agent_grace_s(&self) -> u64 {
        let signal = self.signal_s();
        signal.saturating_sub((signal / 10).clamp(1, 30)).max(1)
    }
}

impl SweepFile {
    /// Read and check `path` (the settings the sweep makes itself, counts that must be positive).
    pub fn read(path: &Path) -> Result<SweepFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let de = toml::Deserializer::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut sweep: SweepFile = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("{}: at `{}`: {}", path.display(), e.path(), e.inner()))?;
        sweep.set = leaf_keys(std::mem::take(&mut sweep.set));
        sweep.check().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(sweep)
    }

    fn check(&self) -> Result<()> {
        ensure!(!(self.axes.is_empty() && self.linked.is_empty()), "[axes] is empty (and there is no [linked])");
        // (a quoted key's spaces, which an override's key loses: `"run.seed "` would be `run.seed` unsaid,
        // beside another `run.seed`)
        let keys = [
            ("[set]", self.set.keys().collect::<Vec<_>>()),
            ("[axes]", self.axes.keys().collect()),
            ("[linked]", self.linked.keys().collect()),
        ];
        for (section, keys) in keys {
            if let Some(k) = keys.into_iter().find(|k| k.contains(char::is_whitespace)) {
                let plain: String = k.split_whitespace().collect();
                bail!("{section}: the key {k:?} has a space (no setting's name has one): write it as {plain:?}");
            }
        }
        for (k, vals) in self.axes.iter().chain(&self.linked) {
            ensure!(!vals.is_empty(), "axis `{k}` has no values");
        }
        let empty = |v: &toml::Value| v.as_table().is_some_and(toml::Table::is_empty);
        if let Some(k) = self.set.iter().find(|(_, v)| empty(v)).map(|(k, _)| k) {
            bail!("[set]: `{k}` = {{}}: an empty table sets nothing; give the value, or its keys");
        }
        if let Some(k) = self.axes.iter().chain(&self.linked).find(|(_, vals)| vals.iter().any(empty)).map(|(k, _)| k) {
            bail!("axis `{k}`: a value is {{}}: an empty table sets nothing; give the value, or its keys");
        }
        if let Some(k) = self.linked.keys().find(|k| self.axes.contains_key(*k)) {
            bail!("`{k}` is in [axes] and in [linked]: give its values in one of them");
        }
        // (an axis's values would replace [set]'s in every run, unsaid; so would `optim.lr` in one and
        // `optim.lr_per_256`, the same setting, in the other)
        let varied = self.axes.keys().map(|a| (a, "[axes]")).chain(self.linked.keys().map(|a| (a, "[linked]")));
        for (a, section) in varied {
            let same = |k: &&String| crate::train::config::same_setting(k, a);
            match self.set.keys().find(same) {
                Some(k) if k == a => bail!(
                    "`{k}` is in [set] and in {section}: the {section} values would replace [set]'s in every run; \
                     give it in one of them"
                ),
                Some(k) => bail!(
                    "`{k}` in [set] and `{a}` in {section} set one value (one holds the other, or both name one \
                     setting; the {section} values would replace [set]'s in every run): give one of them"
                ),
                None => {}
            }
        }
        // (two varied keys of one setting: the runs would be named for, and record, a value one of them
        // replaces)
        let varied: Vec<(&String, &str)> =
            self.axes.keys().map(|a| (a, "[axes]")).chain(self.linked.keys().map(|a| (a, "[linked]"))).collect();
        for (i, (a, sa)) in varied.iter().enumerate() {
            let same = |(b, _): &&(&String, &str)| crate::train::config::same_setting(a, b);
            if let Some((b, sb)) = varied[i + 1..].iter().find(same) {
                bail!(
                    "`{a}` in {sa} and `{b}` in {sb} set one value (one holds the other, or both name one setting: \
                     a run would be named for a value the other replaces): vary one of them"
                );
            }
        }
        // (two alternatives in [set], a table of no order: which would stay is not the file's to say)
        if let Some(k) = self
            .set
            .keys()
            .find(|k| crate::train::config::alternative(k).is_some_and(|other| self.set.contains_key(other)))
        {
            let other = crate::train::config::alternative(k).unwrap_or_default();
            bail!("`{k}` and `{other}` are both in [set]: they set one value, give one");
        }
        let lengths: Vec<(&String, usize)> = self.linked.iter().map(|(k, v)| (k, v.len())).collect();
        if let Some(&(k, n)) = lengths.iter().find(|(_, n)| *n != lengths[0].1) {
            bail!(
                "[linked] lists must be as long as each other (their i-th values make one point): `{}` has {}, \
                 `{k}` {n}",
                lengths[0].0,
                lengths[0].1
            );
        }
        // what the sweep sets itself: each run's folder, and with a budget axis its steps
        let budgets: Vec<&str> = super::Budget::AXES.iter().copied().filter(|a| self.varied(a)).collect();
        if budgets.len() > 1 {
            bail!(
                "axes `{}`: a run's steps spend one budget (tokens, training FLOPs or tokens per parameter)",
                budgets.join("` and `")
            );
        }
        let budget = budgets.first();
        for k in self.axes.keys().chain(self.linked.keys()).chain(self.set.keys()) {
            ensure!(k != "run.dir", "`{k}` is the sweep's to set (out/NAME for each run): set `out` instead");
            if let Some(axis) = budget.filter(|_| k == "run.steps") {
                bail!("`run.steps` beside a `{axis}` axis: the budget sets each run's steps");
            }
        }
        let s = &self.slurm;
        for (key, n) in [("nproc_per_node", Some(self.nproc_per_node)), ("[slurm] nodes", s.nodes)] {
            ensure!(n != Some(0), "{key} = 0: expected at least 1");
        }
        ensure!(s.max_parallel != Some(0), "[slurm] max_parallel = 0: expected at least 1 (or leave it out)");
        if let Some(mode) = &s.numa_binding {
            use clap::ValueEnum;
            let modes: Vec<String> = infinity_launcher::agent::NumaBinding::value_variants()
                .iter()
                .filter_map(|v| Some(v.to_possible_value()?.get_name().to_string()))
                .collect();
            ensure!(
                modes.contains(mode),
                "[slurm] numa_binding = {mode:?}: expected one of {} (infinity launch --numa-binding)",
                modes.join(", ")
            );
        }
        // (sbatch would refuse the script: said before any run is planned)
        if let Some(t) = s.time.as_deref() {
            // (sbatch reads digits, `-` and `:` alone; 0 and -1 are no limit, as the words are)
            let unlimited = ["UNLIMITED", "INFINITE", "0", "-1"].contains(&t.to_ascii_uppercase().as_str());
            let digits = t.chars().all(|c| c.is_ascii_digit() || c == '-' || c == ':');
            ensure!(
                unlimited || (digits && time_limit_s(t).is_some()),
                "[slurm] time = {t:?}: expected a time as sbatch --time takes it (MM, MM:SS, HH:MM:SS, D-HH, \
                 D-HH:MM, D-HH:MM:SS, or UNLIMITED)"
            );
        }
        // SLURM takes 0..=65535 s; the signal must come after the task starts to leave it any work
        let signal = s.signal_s();
        ensure!((1..=65535).contains(&signal), "[slurm] signal_s = {signal}: expected 1 to 65535 seconds");
        if let Some(limit) = s.time.as_deref().and_then(time_limit_s).filter(|&l| l > 0) {
            ensure!(
                signal < limit,
                "[slurm] signal_s = {signal} is not below time = {:?} ({limit} s): the time-limit warning would \
                 come as the task starts",
                s.time.as_deref().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Whether `key` is an axis, of `[axes]` or `[linked]`.
    pub fn varied(&self, key: &str) -> bool {
        self.axes.contains_key(key) || self.linked.contains_key(key)
    }

    /// The ranks a run trains on: `nproc_per_node` on each of `[slurm] nodes` (1 unless set; local runs
    /// and `--print` use one node, whose split any batch that splits over more nodes also allows).
    pub fn world(&self) -> usize {
        self.nproc_per_node * self.slurm.nodes.unwrap_or(1)
    }
}

pub use infinity_launcher::time_limit_s;

/// Where a run's override came from in the sweep file: `[axes]`, `[linked]` or `[set]`.
pub fn section_of(sweep: &SweepFile, key: &str) -> &'static str {
    match (sweep.axes.contains_key(key), sweep.linked.contains_key(key)) {
        (true, _) => "[axes]",
        (_, true) => "[linked]",
        _ => "[set]",
    }
}

/// A run's config error with its `--set KEY` (how `TrainConfig::load` names the source of an override)
/// phrased as the sweep file's section and key: `[axes] model.embed_dims: unknown key …`. `overrides`
/// holds the `key=value` overrides of the run that come from the sweep file's `[set]`, `[axes]` and `[linked]`.
pub fn in_sweep_terms(e: anyhow::Error, path: &Path, sweep: &SweepFile, overrides: &[String]) -> anyhow::Error {
    let text = format!("{e:#}");
    // `--set KEY=VALUE: …` (the override did not apply) or `--set KEY: …` (its value was refused)
    let found = overrides.iter().find_map(|o| {
        let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k);
        let rest =
            text.strip_prefix(&format!("--set {o}: ")).or_else(|| text.strip_prefix(&format!("--set {key}: ")))?;
        Some((key, rest))
    });
    let Some((key, rest)) = found else { return e };
    let rest = rest.strip_prefix(&format!("at `{key}`: ")).unwrap_or(rest);
    // the config crate's "unknown field `x`, expected one of … for key `model`": the list stays
    let mut rest = match rest.strip_prefix("unknown field ") {
        Some(tail) => format!("unknown key {}", tail.rsplit_once(" for key `").map_or(tail, |(list, _)| list)),
        None => rest.to_string(),
    };
    let section = section_of(sweep, key);
    // an entry of a list the base config does not have (`data.mix[0].weight` without `[[data.mix]]`)
    if let Some((list, _)) = key.split_once('[').filter(|_| rest.contains("missing")) {
        let dir = if list == "data.phases" { "" } else { ", with their `dir`," };
        rest += &format!(
            " (`{key}` sets a key of an entry of `{list}`, which the base config must hold: put the \
             `[[{list}]]` tables{dir} in the base config and vary their keys here)"
        );
    }
    // an axis of one word is a config section or a budget, which the config's list does not hold
    if section != "[set]" && !key.contains('.') && rest.starts_with("unknown key ") {
        rest += &super::Budget::AXES.iter().map(|a| format!(", `{a}`")).collect::<String>();
    }
    anyhow::anyhow!("{}: {section} {key}: {rest}", path.display())
}

/// `key=value`, an override as `TrainConfig::load` takes it. A string that reads as another value
/// (`"64"`, `"true"`) stays a string, quoted, so the config refuses it where a number is due, as it
/// refuses one in a config file.
pub fn override_text(key: &str, v: &toml::Value) -> String {
    let reads_otherwise = |s: &str| toml::from_str::<toml::Table>(&format!("v = {s}")).is_ok_and(|t| !t["v"].is_str());
    match v {
        toml::Value::String(s) if reads_otherwise(s) => format!("{key}={v}"),
        _ => format!("{key}={}", super::value_text(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(text: &str) -> Result<SweepFile> {
        let mut s: SweepFile = toml::from_str(text)?;
        s.set = super::leaf_keys(std::mem::take(&mut s.set));
        s.check().map(|_| s)
    }

    /// An empty table, in `[set]` or among an axis's values, sets nothing: refused, not dropped.
    #[test]
    fn empty_tables_are_refused() {
        let head = "base = \"b.toml\"\nout = \"o\"\n[axes]\n\"optim.lr\" = [1e-3]\n";
        let e = sweep(&format!("{head}[set]\n\"checkpoint.every\" = {{}}\n")).unwrap_err().to_string();
        assert!(e.contains("[set]: `checkpoint.every` = {}: an empty table sets nothing"), "{e}");
        let e = sweep(&format!("{head}[set.checkpoint]\nevery = {{}}\n")).unwrap_err().to_string();
        assert!(e.contains("`checkpoint.every` = {}"), "{e}");
        let e = sweep(&format!("{head}\"run.log_every\" = [{{}}]\n")).unwrap_err().to_string();
        assert!(e.contains("axis `run.log_every`: a value is {}: an empty table sets nothing"), "{e}");
    }

    /// `[set]` written with bare dotted keys or as tables is read key by key (one override of a table
    /// replaced the base config's whole section, and met an axis's key in no fixed order); a tagged
    /// choice stays one value.
    #[test]
    fn set_tables_are_read_key_by_key() {
        let head = "base = \"b.toml\"\nout = \"o\"\n";
        let s = sweep(&format!(
            "{head}[set]\noptim.lr = 1e-3\n\"optim.decay\" = {{ kind = \"cosine\" }}\n[set.run]\nseed = 4\n\
             [axes]\n\"model.depth\" = [2]\n"
        ))
        .unwrap();
        let keys: Vec<&String> = s.set.keys().collect();
        assert_eq!(keys, ["optim.decay", "optim.lr", "run.seed"]);
        assert!(s.set["optim.decay"].is_table());
        for text in [
            "[set]\noptim.lr = 1e-3\n[axes]\n\"optim.lr\" = [3e-3]\n",
            "[set.run]\nsteps = 50\n[axes]\n\"run.steps\" = [20]\n",
        ] {
            let e = sweep(&format!("{head}{text}")).unwrap_err().to_string();
            assert!(e.contains("is in [set] and in [axes]"), "{e}");
        }
        // (a key with a space was taken as the key without it, beside that key itself)
        let e = sweep(&format!("{head}[axes]\n\"run.seed\" = [0, 1]\n\"run.seed \" = [2]\n")).unwrap_err().to_string();
        assert!(
            e.contains(
                r#"[axes]: the key "run.seed " has a space (no setting's name has one): write it as "run.seed""#
            ),
            "{e}"
        );
        let e =
            sweep(&format!("{head}[set.run]\n\" steps\" = 5\n[axes]\n\"run.seed\" = [2]\n")).unwrap_err().to_string();
        assert!(e.contains(r#"[set]: the key "run. steps""#), "{e}");
    }

    #[test]
    fn the_signal_lead_time_is_checked() {
        let base = "base = \"b.toml\"\nout = \"o\"\n[axes]\n\"optim.lr\" = [1e-3]\n[slurm]\n";
        assert_eq!(sweep(base).unwrap().slurm.signal_s(), 300);
        // the agent's grace: the lead time less a tenth of it, 1 to 30 s
        let grace = |signal: u64| SlurmSection { signal_s: Some(signal), ..Default::default() }.agent_grace_s();
        assert_eq!([grace(300), grace(900), grace(60), grace(5), grace(1)], [270, 870, 54, 4, 1]);
        assert_eq!(sweep(&format!("{base}signal_s = 900\ntime = \"1:00:00\"")).unwrap().slurm.signal_s(), 900);
        for time in ["2-00:00:00", "90", "UNLIMITED", "0", "-1"] {
            assert!(sweep(&format!("{base}time = \"{time}\"")).is_ok(), "{time}");
        }
        for (extra, want) in [
            ("signal_s = 0", "expected 1 to 65535"),
            ("signal_s = 70000", "expected 1 to 65535"),
            ("time = \"00:05:00\"", "signal_s = 300 is not below time = \"00:05:00\" (300 s)"),
            ("time = \"banana\"", "[slurm] time = \"banana\": expected a time as sbatch --time takes it"),
            ("time = \"1:2:3:4\"", "[slurm] time = \"1:2:3:4\": expected"),
            ("time = \" 30\"", "[slurm] time = \" 30\": expected"),
            ("time = \"+30\"", "[slurm] time = \"+30\": expected"),
            ("nodes = 0", "[slurm] nodes = 0"),
            ("max_parallel = 0", "max_parallel = 0"),
        ] {
            let e = sweep(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
        let e = sweep(&base.replace("[axes]", "nproc_per_node = 0\n[axes]")).unwrap_err().to_string();
        assert!(e.contains("nproc_per_node = 0"), "{e}");
    }

    #[test]
    fn linked_values_are_checked() {
        let head = "base = \"b.toml\"\nout = \"o\"\n";
        let ladder = "[linked]\n\"model.depth\" = [2, 4]\n\"model.embed_dim\" = [64, 128]\n";
        let s = sweep(&format!("{head}{ladder}")).unwrap();
        assert!(s.axes.is_empty() && s.varied("model.depth") && !s.varied("model.num_heads"));
        assert_eq!(section_of(&s, "model.depth"), "[linked]");
        for (text, want) in [
            (
                format!("{head}[linked]\n\"model.depth\" = [2, 4]\n\"model.embed_dim\" = [64]\n"),
                "[linked] lists must \
              be as long as each other (their i-th values make one point): `model.depth` has 2, `model.embed_dim` 1",
            ),
            (format!("{head}{ladder}[axes]\n\"model.depth\" = [6]\n"), "`model.depth` is in [axes] and in [linked]"),
            (
                format!("{head}[set]\n\"optim.lr\" = 1e-3\n[axes]\n\"optim.lr\" = [1e-3, 3e-3]\n"),
                "`optim.lr` is in [set] and in [axes]: the [axes] values would replace [set]'s in every run",
            ),
            (
                format!("{head}[set]\n\"model.depth\" = 3\n{ladder}"),
                "`model.depth` is in [set] and in [linked]: the [linked] values would replace",
            ),
            (
                format!("{head}[set]\n\"optim.lr_per_256\" = 1e-3\n[axes]\n\"optim.lr\" = [1e-3]\n"),
                "`optim.lr_per_256` in [set] and `optim.lr` in [axes] set one value",
            ),
            (
                format!(
                    "{head}[set]\n\"optim.decay\" = {{ kind = \"cosine\" }}\n[axes]\n\"optim.decay.min_ratio\" = [0.1]\n"
                ),
                "`optim.decay` in [set] and `optim.decay.min_ratio` in [axes] set one value (one holds the other",
            ),
            (
                format!(
                    "{head}[set]\n\"optim.lr\" = 1e-3\n\"optim.lr_per_256\" = 1e-3\n[axes]\n\"model.depth\" = [2]\n"
                ),
                "`optim.lr` and `optim.lr_per_256` are both in [set]: they set one value, give one",
            ),
            (
                format!("{head}[axes]\n\"optim.lr\" = [1e-3]\n\"optim.lr_per_256\" = [0.64]\n"),
                "`optim.lr` in [axes] and `optim.lr_per_256` in [axes] set one value",
            ),
            (format!("{head}[axes]\n"), "[axes] is empty (and there is no [linked])"),
            (
                format!("{head}{ladder}[axes]\ntokens = [1e6]\ntokens_per_parameter = [20]\n"),
                "axes `tokens` and \
              `tokens_per_parameter`: a run's steps spend one budget",
            ),
            (format!("{head}[linked]\n\"run.steps\" = [5]\ncompute = [1e12]\n"), "`run.steps` beside a `compute` axis"),
        ] {
            let e = sweep(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn override_errors_name_the_sweep_section() {
        let s =
            sweep("base = \"b.toml\"\nout = \"o\"\n[set]\n\"val.every\" = 5\n[axes]\n\"model.embed_dims\" = [64]\n")
                .unwrap();
        let overrides = vec!["val.every=5".to_string(), "model.embed_dims=64".to_string()];
        let e = anyhow::anyhow!(
            "--set model.embed_dims: at `model.embed_dims`: unknown field `embed_dims`, expected one of `preset`, \
             `depth` for key `model`"
        );
        let text = in_sweep_terms(e, Path::new("s.toml"), &s, &overrides).to_string();
        assert_eq!(
            text,
            "s.toml: [axes] model.embed_dims: unknown key `embed_dims`, expected one of `preset`, `depth`"
        );
        // a top-level axis may also be a budget
        let budget = sweep("base = \"b.toml\"\nout = \"o\"\n[axes]\ntoken = [1e6]\n").unwrap();
        let e = anyhow::anyhow!("--set token=1e6: at `token`: unknown field `token`, expected one of `run`, `val`");
        assert_eq!(
            in_sweep_terms(e, Path::new("s.toml"), &budget, &["token=1e6".into()]).to_string(),
            "s.toml: [axes] token: unknown key `token`, expected one of `run`, `val`, `tokens`, `compute`, \
             `tokens_per_parameter`"
        );
        let e = anyhow::anyhow!("val.every must be positive").context("--set val.every");
        let text = in_sweep_terms(e, Path::new("s.toml"), &s, &overrides).to_string();
        assert_eq!(text, "s.toml: [set] val.every: val.every must be positive");
        // an error about the base file is left as it is
        let e = anyhow::anyhow!("base.toml: at `data.dir`: missing");
        assert_eq!(
            in_sweep_terms(e, Path::new("s.toml"), &s, &overrides).to_string(),
            "base.toml: at `data.dir`: missing"
        );
    }
}
