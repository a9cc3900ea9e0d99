//! Reading a [`TrainConfig`]: the TOML file with the files it `extends` merged underneath, then
//! `INF__SECTION__KEY` environment variables, then `--set` overrides; an error names the key and where
//! its value came from. A run's own `config.toml` read back ([`TrainConfig::load_saved`]) takes no
//! variables: it is the config the run trained with.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use self::env_vars::InfSource;
use self::messages::{
    allowed_values, plain_message, set_past_the_end, source_of, source_of_missing, IN_THE_ENVIRONMENT,
};
use super::tagged::value_within;
use super::TrainConfig;

mod env_vars;
mod messages;

pub(super) use self::env_vars::InfVars;
pub use self::env_vars::{inf_var_key, inf_vars, vars_taken};

impl TrainConfig {
    /// Load `path` (and the files it `extends`), apply `INF__…` environment variables and
    /// `key.path=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<TrainConfig> {
        Self::load_checked(path, overrides, Env::Read, true)
    }

    /// [`TrainConfig::load`] without the warnings of settings that are allowed but likely mistakes: for
    /// a sweep's base config, whose runs say them by name.
    pub fn load_quietly(path: &Path, overrides: &[String]) -> Result<TrainConfig> {
        Self::load_checked(path, overrides, Env::Read, false)
    }

    /// A run's own `config.toml` as it trained: without the `INF__…` variables (its training applied
    /// those it had) and without the warnings its training said (`infinity eval`).
    pub fn load_saved(path: &Path) -> Result<TrainConfig> {
        Self::load_checked(path, &[], Env::Ignore, false)
    }

    fn load_checked(path: &Path, overrides: &[String], env: Env, warn: bool) -> Result<TrainConfig> {
        let given = merged(path, overrides, env)?;
        let mut cfg: TrainConfig = typed(&given)?;
        // (`--set model.init_from=""` takes out a source the file names: no override can remove a key)
        if cfg.model.init_from.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            cfg.model.init_from = None;
        }
        // each check's message starts with the keys it is about (before its `must` or `:`; what follows
        // is context): name where their values came from, an override or variable before the file
        let checked = if warn { cfg.validate() } else { cfg.validate_quietly() };
        checked.map_err(|e| {
            let text = e.to_string();
            let subject =
                [" must ", ": "].iter().filter_map(|sep| text.find(sep)).min().map_or(&text[..], |i| &text[..i]);
            // (`data.mix[0].weight` too)
            let is_key = |w: &&str| {
                w.starts_with(|c: char| c.is_ascii_lowercase())
                    && w.contains('.')
                    && w.chars().all(|c| c.is_ascii_lowercase() || "0123456789_.[]".contains(c))
            };
            let keys: Vec<&str> = subject
                .split(|c: char| c.is_whitespace() || "()`,:".contains(c))
                .map(|w| w.trim_end_matches('.'))
                .filter(is_key)
                .collect();
            // an override or variable of any of them (what the user just changed), else the file that
            // sets the first, the subject (not a base file that sets another key it names)
            let sources: Vec<String> = keys.iter().map(|k| source_of(k, &given)).collect();
            let overridden = sources.iter().find(|s| s.starts_with("--set ") || s.ends_with(IN_THE_ENVIRONMENT));
            let source = overridden.or(sources.first()).cloned().unwrap_or_else(|| path.display().to_string());
            e.context(source)
        })?;
        Ok(cfg)
    }
}

/// What shapes a model in a training config: its `[model]`, `data.dir` and `run.precision`, read as
/// [`TrainConfig::load`] reads the file, without the training settings a run requires or checks
/// (`infinity sample` and `infinity export` of a bare weights file).
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelPart {
    pub model: super::ModelSection,
    #[serde(default)]
    pub data: DataDir,
    #[serde(default)]
    pub run: RunPrecision,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DataDir {
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RunPrecision {
    #[serde(default)]
    pub precision: super::Precision,
}

impl ModelPart {
    /// [`ModelPart`] of `path` with `overrides` (`--set`) and the `INF__…` variables.
    pub fn load(path: &Path, overrides: &[String]) -> Result<ModelPart> {
        let given = merged(path, overrides, Env::Read)?;
        // (the other keys of a training config shape no model and are not read, but one misspelled on the
        // command line or in the environment is refused, as `infinity train` refuses it: its user meant
        // it to change something)
        let sets =
            overrides.iter().filter_map(|o| Some((format!("--set {o}"), o.split_once('=')?.0.trim().to_string())));
        let vars = given.vars.iter().filter_map(|(v, _)| Some((format!("{v}{IN_THE_ENVIRONMENT}"), inf_var_key(v)?)));
        for (source, key) in sets.chain(vars) {
            if let Some(why) = unknown_key(&key) {
                bail!("{source}: {key} is not a key of a training config ({why})");
            }
        }
        typed(&given)
    }
}

/// Why `key` (a dotted path, as `--set` takes) names nothing in a training config (serde's words for
/// the first part that is unknown), if it does not: the key alone is read into a [`TrainConfig`],
/// which refuses an unknown field as it meets it, before the missing keys beside it.
fn unknown_key(key: &str) -> Option<String> {
    let probe = config::Config::builder().set_override(key, "0").ok()?.build().ok()?;
    match serde_path_to_error::deserialize::<_, TrainConfig>(probe) {
        // (or a key below one that holds a value, not a table: `optim.lr.x`)
        Err(e) if ["unknown field", "invalid type: map"].iter().any(|w| e.inner().to_string().starts_with(w)) => {
            Some(plain_message(&e.path().to_string(), &e.inner().to_string()).1)
        }
        _ => None,
    }
}

/// Whether a config reads the process's `INF__…` variables.
#[derive(Clone, Copy, PartialEq)]
enum Env {
    Read,
    Ignore,
}

/// A config as its layers gave it: where it was read from, and the merged result.
struct Given<'a> {
    path: &'a Path,
    overrides: &'a [String],
    /// The `INF__…` variables it read, as (variable, value).
    vars: Vec<(String, String)>,
    built: config::Config,
    /// The merged values as given (before deserialising converts them).
    values: serde_json::Value,
}

/// The config of `path` (and the files it `extends`) with the `INF__…` variables (unless `env` says
/// not) and `overrides` applied.
fn merged<'a>(path: &'a Path, overrides: &'a [String], env: Env) -> Result<Given<'a>> {
    let mut table = load_table(path, &mut Vec::new())?;
    let vars = match env {
        Env::Read => InfVars::of_process()?,
        Env::Ignore => InfVars { vars: vec![], dropped: true },
    };
    let (env, kept) = settle_alternatives(&mut table, vars, overrides)?;
    let (env, kept) = super::tagged::settle_kinds(&mut table, env, kept)?;
    let merged = toml::to_string(&table).context("re-serialising the merged config")?;
    let read_vars = env.vars.clone();
    // (a variable's value is read as a --set's is: TOML, else text)
    let mut vars = Vec::with_capacity(env.vars.len());
    for (var, text) in &env.vars {
        let Some(key) = inf_var_key(var) else { continue };
        let value = override_value(text.trim()).with_context(|| format!("{var}{IN_THE_ENVIRONMENT}"))?;
        // (a table's kind and alternatives are settled key by key, as the variables name them)
        if text.trim_start().starts_with('{') || text.contains('{') && text.trim_start().starts_with('[') {
            bail!(
                "{var}{IN_THE_ENVIRONMENT}: a variable sets one value: give a table's keys one by one \
                 ({var}__KEY=…, {var}__0__KEY=… for an array's), or the table with --set"
            );
        }
        if let Some((other, _)) = vars.iter().find(|(k, _): &&(String, _)| keys_overlap(k, &key)) {
            bail!(
                "{var}{IN_THE_ENVIRONMENT} sets {key} and another variable sets {other}, one inside the other: which \
                 applies is not fixed; give one"
            );
        }
        vars.push((key, value));
    }
    let mut b = config::Config::builder()
        .add_source(config::File::from_str(&merged, config::FileFormat::Toml))
        .add_source(InfSource(vars));
    refuse_overlapping(&kept)?;
    for o in &kept {
        let Some((k, v)) = o.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            bail!("--set {o}: expected key.path=value");
        };
        if k.trim().split('.').any(str::is_empty) {
            bail!("--set {o}: `{}` has an empty part: expected key.path=value, such as optim.lr=3e-4", k.trim());
        }
        if k.contains("[-") {
            bail!("--set {o}: an array's elements count from 0 (`data.mix[0].weight`), not from its end");
        }
        let value = override_value(v.trim()).with_context(|| format!("--set {o}"))?;
        b = b.set_override(k.trim(), value).with_context(|| format!("--set {o}"))?;
    }
    let built = b.build().with_context(|| format!("reading {}", path.display()))?;
    let values: serde_json::Value = built.clone().try_deserialize().context("reading the merged config")?;
    Ok(Given { path, overrides, vars: read_vars, built, values })
}

/// `T` deserialised from the merged config: an error names the key and where its value came from, a
/// value the config crate converted (a fraction rounded, a quoted number, a number too large saturated)
/// is refused, and a text key set by a variable or `--set` keeps the text as typed.
fn typed<T: DeserializeOwned + Serialize>(given: &Given) -> Result<T> {
    let value: T = serde_path_to_error::deserialize(given.built.clone()).map_err(|e| {
        let (at, inner) = (e.path().to_string(), e.inner().to_string());
        let (key, what) = plain_message(&at, &inner);
        if let Some(gap) = set_past_the_end(&key, &what, given) {
            return anyhow::anyhow!("{gap}");
        }
        // (by the table and the crate's words: a missing field of `optim.decay` is told what its kind takes)
        let allowed = allowed_values(&at, &inner);
        let source = match what.starts_with("missing") {
            true => source_of_missing(&key, given),
            false => source_of(&key, given),
        };
        anyhow::anyhow!("{source}: at `{key}`: {what}{allowed}")
    })?;
    let mut back = super::as_typed::every_key(|| serde_json::to_value(&value)).context("re-serialising the config")?;
    let mut values = given.values.clone();
    let value = match super::as_typed::keep_text(&mut values, &mut back, given.overrides, &given.vars) {
        true => serde_json::from_value(back.clone()).context("reading the config with its text kept")?,
        false => value,
    };
    // the config crate rounds 2.6 to 3 and reads "3" as 3 where a whole number is due: refuse what it
    // changed
    if let Some((key, found, want)) = super::as_typed::converted(&values, &back, "") {
        bail!("{}: at `{key}`: expected {want}, found {found}", source_of(&key, given));
    }
    Ok(value)
}

/// A TOML file as a table, with `extends = "base.toml"` (relative to the file) merged underneath it:
/// tables merge key by key, the extending file wins.
/// `within` holds the files that extend it, outermost first (a file that extends one of them is a cycle).
fn load_table(path: &Path, within: &mut Vec<std::path::PathBuf>) -> Result<toml::Table> {
    let depth = within.len();
    if depth > 8 {
        bail!("{}: `extends` nests deeper than 8 files", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if depth == 0 && text.trim().is_empty() {
        bail!(
            "{}: the file is empty (a training config has [run], [model], [data] and [optim] tables)",
            path.display()
        );
    }
    let mut table: toml::Table = text.parse().with_context(|| format!("parsing {}", path.display()))?;
    if let Some((a, b)) =
        ALTERNATIVES.into_iter().find(|(a, b)| value_at(&table, a).is_some() && value_at(&table, b).is_some())
    {
        bail!("{}: {a} and {b} set one value: give one", path.display());
    }
    match table.remove("extends") {
        None => Ok(table),
        Some(toml::Value::String(base)) => {
            let base_path = path.parent().unwrap_or(Path::new(".")).join(&base);
            // (a cycle named once, not once for every turn around it)
            let same =
                |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
            within.push(path.to_path_buf());
            if let Some(i) = within.iter().position(|p| same(p, &base_path)) {
                let chain: Vec<String> =
                    within[i..].iter().chain([&base_path]).map(|p| p.display().to_string()).collect();
                bail!("`extends` makes a cycle: {}", chain.join(" extends "));
            }
            let mut merged =
                load_table(&base_path, within).with_context(|| format!("{}: extends {base}", path.display()))?;
            within.pop();
            for (a, b) in ALTERNATIVES {
                for (set, other) in [(a, b), (b, a)] {
                    if value_at(&table, set).is_some() {
                        remove(&mut merged, other);
                    }
                }
            }
            // (a table of another kind than the base's drops the base's keys its kind does not take)
            for tagged in super::tagged::TAGGED {
                let kind = format!("{tagged}.kind");
                if let Some(k) = value_at(&table, &kind).filter(|&k| value_at(&merged, &kind) != Some(k)) {
                    super::tagged::drop_foreign(&mut merged, tagged, k.as_str().unwrap_or_default());
                }
            }
            merge(&mut merged, table);
            Ok(merged)
        }
        Some(v) => bail!("{}: `extends` must be a file name, found {v}", path.display()),
    }
}

/// Keys that set one value two ways: the peak learning rate as itself or, as upstream's `tblr`, per
/// 256 samples of the batch. Of each pair, the one set last (a file over the file it `extends`, an
/// `INF__…` variable over the files, `--set` over both, a later `--set` over an earlier) replaces the
/// other.
const ALTERNATIVES: [(&str, &str); 1] = [("optim.lr", "optim.lr_per_256")];

/// The key that sets the same value as `key` another way ([`ALTERNATIVES`]), if any.
pub fn alternative(key: &str) -> Option<&'static str> {
    ALTERNATIVES.iter().find_map(|&(a, b)| match key {
        k if k == a => Some(b),
        k if k == b => Some(a),
        _ => None,
    })
}

/// Whether config keys `a` and `b` set one value: [`keys_overlap`], or the two ways of one setting.
pub fn same_setting(a: &str, b: &str) -> bool {
    keys_overlap(a, b) || alternative(a) == Some(b)
}

/// [`ALTERNATIVES`] settled: of each pair, the key set last kept, the other taken out of the merged
/// files (`table`), the environment and the earlier `--set` overrides. The environment and the
/// overrides to apply. Both keys of a pair in the environment is an error (neither is later).
fn settle_alternatives(
    table: &mut toml::Table,
    mut env: InfVars,
    overrides: &[String],
) -> Result<(InfVars, Vec<String>)> {
    let key_of = |o: &String| o.split_once('=').map(|(k, _)| k.trim().to_string());
    // (the key an override sets, itself or inside a table: `optim={ lr = 1e-3 }` sets optim.lr)
    let sets = |o: &String, key: &str| o.split_once('=').is_some_and(|(k, v)| value_within(k.trim(), v, key).is_some());
    let mut kept = overrides.to_vec();
    for (a, b) in ALTERNATIVES {
        let last_set = overrides.iter().rev().find_map(|o| [a, b].into_iter().find(|k| sets(o, k)).map(String::from));
        if last_set.is_none() && env.sets(a) && env.sets(b) {
            let var = |k: &str| format!("INF__{}", k.to_uppercase().replace('.', "__"));
            bail!("{} and {} are both set in the environment: they set one value, give one", var(a), var(b));
        }
        let winner = last_set.or_else(|| [a, b].into_iter().find(|k| env.sets(k)).map(String::from));
        let Some(winner) = winner else { continue };
        let loser = if winner == a { b } else { a };
        remove(table, loser);
        env.drop_key(loser);
        kept.retain(|o| key_of(o).as_deref() != Some(loser));
    }
    Ok((env, kept))
}

/// The value at dotted `key` in `table` at any depth, array items included (`data.mix[0].weight`).
pub fn value_at<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let mut value: Option<&toml::Value> = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, i)) => (name, Some(i.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (part, None),
        };
        let inner = match value {
            None => table.get(name)?,
            Some(v) => v.as_table()?.get(name)?,
        };
        value = Some(match index {
            Some(i) => inner.as_array()?.get(i)?,
            None => inner,
        });
    }
    value
}

/// `table` without the value at dotted `key` (a section and its key).
fn remove(table: &mut toml::Table, key: &str) {
    if let Some((section, rest)) = key.split_once('.') {
        if let Some(t) = table.get_mut(section).and_then(toml::Value::as_table_mut) {
            t.remove(rest);
        }
    }
}

/// Whether config keys `a` and `b` (dotted paths) touch one value: the same key, or a table around the
/// other (`optim.decay` holds `optim.decay.min_ratio`).
pub fn keys_overlap(a: &str, b: &str) -> bool {
    // (`data.mix` holds `data.mix[0].weight`)
    a == b
        || a.strip_prefix(b).is_some_and(|r| r.starts_with(['.', '[']))
        || b.strip_prefix(a).is_some_and(|r| r.starts_with(['.', '[']))
}

/// Refuse two overrides of which one sets part of the other (`optim={ lr = 1e-3 }` and `optim.lr=3e-3`,
/// `data.mix=[…]` and `data.mix[0].weight=2`): the config crate applies its overrides in no fixed order,
/// so either could win, from one run to the next. (The same key twice is one override: the last.)
fn refuse_overlapping(overrides: &[String]) -> Result<()> {
    let keys: Vec<&str> = overrides.iter().filter_map(|o| Some(o.split_once('=')?.0.trim())).collect();
    for a in &keys {
        // (the shorter key is the table around the longer)
        if let Some(b) = keys.iter().find(|b| b.len() > a.len() && keys_overlap(a, b)) {
            bail!(
                "--set {a}=… and --set {b}=…: the first sets the second too, and which applies is not fixed; give \
                 `{b}` inside `{a}`'s value, or set the parts of `{a}` one key at a time"
            );
        }
    }
    Ok(())
}

/// A `--set` value as TOML reads it (`2` a number, `true` a boolean, `[1, 2]` an array, `{ kind =
/// "cosine" }` a table), so it deserialises where a plain string would not (inside tagged enums such as
/// `optim.decay`); anything else (`runs/x`) stays a string, but for a whole number too large for
/// TOML's 64 bits, which is refused rather than read as a string.
fn override_value(text: &str) -> Result<config::Value> {
    fn convert(v: toml::Value) -> config::Value {
        match v {
            toml::Value::Integer(i) => i.into(),
            toml::Value::Float(f) => f.into(),
            toml::Value::Boolean(b) => b.into(),
            toml::Value::Array(a) => a.into_iter().map(convert).collect::<Vec<_>>().into(),
            toml::Value::Table(t) => {
                t.into_iter().map(|(k, v)| (k, convert(v))).collect::<std::collections::HashMap<_, _>>().into()
            }
            v => v.to_string().trim_matches('"').to_string().into(),
        }
    }
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) => Ok(convert(t.remove("v").expect("the key just parsed"))),
        // (what TOML does not write but a shell or job spec does: `TRUE`, `.5`, `5.`; a text key keeps
        // the text as typed all the same, `keep_text`)
        Err(_) if text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false") => {
            Ok(text.eq_ignore_ascii_case("true").into())
        }
        Err(_) if text.contains(['.', 'e', 'E']) && text.parse::<f64>().is_ok_and(f64::is_finite) => {
            Ok(text.parse::<f64>().expect("just parsed").into())
        }
        Err(_) => {
            // (a TOML integer, as TOML writes one, that does not fit: not `007` or `01_02`, which stay
            // strings as TOML does not read them as numbers)
            let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
            let toml_integer = digits.starts_with(|c: char| ('1'..='9').contains(&c))
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
                && !digits.contains("__")
                && !digits.ends_with('_');
            if toml_integer {
                bail!("{text} is out of range: whole numbers are 64-bit (at most {})", i64::MAX);
            }
            Ok(text.into())
        }
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TrainConfig;

    /// Config errors name the key as the file spells it (the config crate's own path drops a dot after an
    /// index), a missing key at its own place, a negative count plainly, and a `--set` past an array's end
    /// as the override it is.
    #[test]
    fn config_errors_name_keys_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let base = "[run]\ndir = \"r\"\nseed = 0\nsteps = 10\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n[data]\ndir = \"d\"\n\
                    global_batch = 8\nmicro_batch = 8\n";
        let error = |extra: &str, sets: &[&str]| {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            format!("{:#}", TrainConfig::load(&path, &sets).unwrap_err())
        };
        let optim = "[optim]\nlr = 1e-3\n";
        let e =
            error(&format!("[[data.mix]]\ndir = \"b\"\n[[data.phases]]\nfrom_step = 3\nweights = \"a\"\n{optim}"), &[]);
        assert!(e.ends_with("at `data.phases[0].weights`: invalid type: string \"a\", expected a sequence"), "{e}");
        let e = error(&format!("[[data.mix]]\nweight = 1.0\n{optim}"), &[]);
        assert!(e.ends_with("at `data.mix[0].dir`: missing: a required key"), "{e}");
        let e = error("", &[]);
        assert!(
            e.ends_with(
                "at `optim`: missing: the [optim] table, with optim.lr or optim.lr_per_256 (the peak learning rate)"
            ),
            "{e}"
        );
        let e = error(optim, &["run.steps=-5"]);
        assert!(e.ends_with("--set run.steps: at `run.steps`: expected a whole number ≥ 0, found -5"), "{e}");
        // (digits TOML reads as no number stay a string: a run folder named 007)
        std::fs::write(dir.path().join("c.toml"), format!("{base}{optim}")).unwrap();
        let sets = ["run.dir=007".to_string()];
        assert_eq!(TrainConfig::load(&dir.path().join("c.toml"), &sets).unwrap().run.dir, std::path::Path::new("007"));
        let e = error(optim, &["optim={ lr = 1e-3 }", "optim.lr=3e-3"]);
        assert!(e.contains("--set optim=… and --set optim.lr=…: the first sets the second too"), "{e}");
        let e = error(optim, &["data.mix[0].weight=2", "data.mix=[]"]);
        assert!(e.contains("--set data.mix=… and --set data.mix[0].weight=…"), "{e}");
        // (alternatives are not one inside the other: the later stays)
        std::fs::write(dir.path().join("c.toml"), format!("{base}{optim}")).unwrap();
        let sets = ["optim.lr_per_256=1e-3".to_string(), "optim.lr=2e-3".to_string()];
        assert_eq!(TrainConfig::load(&dir.path().join("c.toml"), &sets).unwrap().optim.lr, Some(2e-3));
        let e = error(optim, &["run.steps=99999999999999999999999"]);
        assert!(
            e.ends_with(
                "99999999999999999999999 is out of range: whole numbers are 64-bit (at most 9223372036854775807)"
            ),
            "{e}"
        );
        // the model's shape, checked with the config (before the dataset or the run folder), by its keys
        let e = error(optim, &["model.num_heads=3"]);
        assert!(e.contains("--set model.num_heads: model.num_heads, model.preset: embed_dim 64 does not split"), "{e}");
        let e = error(optim, &["model.depth=0"]);
        assert!(e.ends_with("--set model.depth: model.depth must be at least 1, found 0"), "{e}");
        let e = error(optim, &["model.cond_drop_rate=1"]);
        assert!(e.ends_with("--set model.cond_drop_rate: model.cond_drop_rate must be in [0, 1), found 1"), "{e}");
        let e = error(optim, &["model.preset=smal"]);
        assert!(e.contains("--set model.preset: model.preset: unknown preset `smal` (one of tiny, small"), "{e}");
        let e = error(optim, &["data.mix[0].dir=a", "data.mix[5].weight=1"]);
        assert!(e.starts_with("--set data.mix[5].weight=1: an element past the end of `data.mix`"), "{e}");
        // a check's subject set by a file that extends another is that file's error, though the base sets
        // another key the message names (data.dir)
        let over = dir.path().join("over.toml");
        std::fs::write(&over, "extends = \"c.toml\"\n[data]\nweight = 1.0\n").unwrap();
        std::fs::write(dir.path().join("c.toml"), format!("{base}{optim}")).unwrap();
        let e = format!("{:#}", TrainConfig::load(&over, &[]).unwrap_err());
        assert!(e.starts_with(&format!("{}: data.weight (1) weighs data.dir", over.display())), "{e}");
    }

    /// Layers over the file: another kind of schedule drops the keys its kind does not take (a table
    /// `--set`, a key `--set`, a file over the one it extends); text keys keep the text typed; a table
    /// `--set` of the learning rate replaces the file's per-256 rate; whole numbers too large, a number
    /// for text and a constant schedule's stray key are refused; a whole float is a micro-batch.
    #[test]
    fn layers_change_kinds_keep_text_and_refuse_what_would_change() {
        use crate::optim::Decay;
        let dir = tempfile::tempdir().unwrap();
        let base =
            "[run]\ndir = \"r\"\nseed = 0\nsteps = 10\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n[data]\n\
                    dir = \"d\"\nglobal_batch = 8\nmicro_batch = 8\n[optim]\nlr_per_256 = 1e-3\n\
                    decay = { kind = \"wsd\", decay_fraction = 0.2, min_ratio = 0.1 }\n";
        let file = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap();
            dir.path().join(name)
        };
        let path = file("c.toml", base);
        let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let load = |path: &std::path::Path, v: &[&str]| TrainConfig::load(path, &sets(v));
        let decay = |path: &std::path::Path, v: &[&str]| load(path, v).unwrap().optim.decay;
        assert_eq!(
            decay(&path, &["optim.decay={ kind = \"cosine\", min_ratio = 0 }"]),
            Decay::Cosine { min_ratio: 0.0 }
        );
        assert_eq!(decay(&path, &["optim.decay.kind=linear"]), Decay::Linear { min_ratio: 0.1 });
        assert_eq!(decay(&path, &["optim.decay.kind=constant"]), Decay::Constant {});
        let child = file("child.toml", "extends = \"c.toml\"\n[optim]\ndecay = { kind = \"cosine\", min_ratio = 0 }\n");
        assert_eq!(decay(&child, &[]), Decay::Cosine { min_ratio: 0.0 });
        let e = format!("{:#}", load(&path, &["optim.decay={ kind = \"constant\", min_ratio = 0.1 }"]).unwrap_err());
        assert!(e.contains("at `optim.decay`: unknown field `min_ratio`"), "{e}");
        // text as typed
        let cfg = load(&path, &["data.dir=1e3", "run.dir=0x10"]).unwrap();
        assert_eq!((cfg.data.dir.to_str(), cfg.run.dir.to_str()), (Some("1e3"), Some("0x10")));
        let numeric = file("n.toml", &base.replace("dir = \"d\"", "dir = 1e3"));
        let e = format!("{:#}", load(&numeric, &[]).unwrap_err());
        assert!(e.ends_with("at `data.dir`: expected text in quotes, found 1000.0"), "{e}");
        // the learning rate inside a table
        assert_eq!(load(&path, &["optim={ lr = 2e-3 }"]).unwrap().optim.lr, Some(2e-3));
        // saturated whole numbers
        let e = format!("{:#}", load(&path, &["run.steps=1e20"]).unwrap_err());
        assert!(e.ends_with("at `run.steps`: expected a whole number ≤ 18446744073709551615, found 1e+20"), "{e}");
        let e = format!("{:#}", load(&file("s.toml", &base.replace("seed = 0", "seed = -1e3")), &[]).unwrap_err());
        assert!(e.ends_with("at `run.seed`: expected a whole number ≥ 0, found -1000.0"), "{e}");
        // not-a-number and infinity, which the config crate reads as 0, the largest number or true
        for (set, want) in [("run.steps=inf", "a whole number"), ("run.seed=nan", "a whole number")] {
            let e = format!("{:#}", load(&path, &[set]).unwrap_err());
            let key = set.split('=').next().unwrap();
            assert!(e.ends_with(&format!("at `{key}`: expected {want}, found nan or inf")), "{e}");
        }
        let e = format!("{:#}", load(&path, &["loss.reweight_by_scale=-inf"]).unwrap_err());
        assert!(e.ends_with("expected true or false, found nan or inf"), "{e}");
        // counts that would exhaust the process: bounded
        let e = format!("{:#}", load(&path, &["data.workers=100000"]).unwrap_err());
        assert!(e.contains("data.workers must be at most 256 reader threads, found 100000"), "{e}");
        let e = format!("{:#}", load(&path, &["sample.per_condition=100000"]).unwrap_err());
        assert!(e.contains("sample.per_condition must be at most 4096, found 100000"), "{e}");
        assert_eq!(load(&path, &["data.micro_batch=4.0"]).unwrap().data.micro_batch.samples(), Some(4));
    }

    /// Keys added since runs were trained are left out of `config.toml` at their defaults: a run's
    /// config written by an earlier build compares equal (a sweep continues it, a resume lists nothing).
    #[test]
    fn later_keys_at_their_defaults_are_not_written() {
        let text = toml::to_string(&crate::train::config::CheckpointSection::default()).unwrap();
        assert!(!text.contains("failed_writes_tolerated") && !text.contains("every_minutes"), "{text}");
        let optim: toml::Table = "lr = 1e-3\n".parse().unwrap();
        let optim: crate::train::config::OptimSection = optim.try_into().unwrap();
        let text = toml::to_string(&optim).unwrap();
        assert!(!text.contains("clip_decay") && !text.contains("ema_decay"), "{text}");
    }

    /// `optim.lr` and `optim.lr_per_256`: the one set last replaces the other, wherever each was set.
    #[test]
    fn of_two_alternatives_the_later_one_stays() {
        use super::{settle_alternatives, InfVars};
        let file: toml::Table = "[optim]\nlr_per_256 = 6e-3\nclip = 5.0\n".parse().unwrap();
        let env = |vars: &[(&str, &str)]| InfVars {
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            dropped: false,
        };
        let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // the environment's rate replaces the file's
        let mut t = file.clone();
        let (e, kept) = settle_alternatives(&mut t, env(&[("INF__OPTIM__LR", "1e-3"), ("HOME", "/h")]), &[]).unwrap();
        assert_eq!(t.to_string(), "[optim]\nclip = 5.0\n");
        assert!(!e.dropped && e.vars.len() == 2 && kept.is_empty());
        // a --set replaces both, and an earlier --set of the other
        let mut t = file.clone();
        let over = sets(&["optim.lr_per_256=1e-3", "run.steps=3", "optim.lr = 2e-3"]);
        let (e, kept) = settle_alternatives(&mut t, env(&[("INF__OPTIM__LR_PER_256", "1")]), &over).unwrap();
        assert_eq!(t.to_string(), "[optim]\nclip = 5.0\n");
        assert!(e.dropped && e.vars.is_empty());
        assert_eq!(kept, sets(&["run.steps=3", "optim.lr = 2e-3"]));
        // nothing set above the file: it stays as it is
        let mut t = file.clone();
        let (e, kept) = settle_alternatives(&mut t, env(&[]), &sets(&["optim.clip=1"])).unwrap();
        assert!(t == file && !e.dropped && kept.len() == 1);
        // both in the environment: neither is later, unless a --set decides
        let both = || env(&[("INF__OPTIM__LR", "1"), ("INF__OPTIM__LR_PER_256", "1")]);
        let err = settle_alternatives(&mut file.clone(), both(), &[]).err().unwrap().to_string();
        assert!(err.contains("INF__OPTIM__LR and INF__OPTIM__LR_PER_256 are both set in the environment"), "{err}");
        let (e, _) = settle_alternatives(&mut file.clone(), both(), &sets(&["optim.lr=2"])).unwrap();
        assert_eq!(e.vars, [("INF__OPTIM__LR".to_string(), "1".to_string())]);
        // the variables' prefix in any case, as the config crate reads them
        assert_eq!(super::inf_var_key("inf__Optim__LR").as_deref(), Some("optim.lr"));
        assert_eq!(super::inf_var_key("INFO"), None);
        assert!(super::same_setting("optim.lr_per_256", "optim.lr") && super::same_setting("optim", "optim.lr"));
    }

    /// A value the config crate changes into a key's default (left out of a config.toml as written) is
    /// refused as any other change is; an array's index counts from 0; an empty file and a cycle of
    /// `extends` are named once.
    #[test]
    fn values_read_as_a_keys_default_and_odd_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = "[run]\ndir = \"r\"\nseed = 0\nsteps = 10\n[model]\npreset = \"tiny\"\nconditioning = \"class\"\n\
                    [data]\ndir = \"d\"\nglobal_batch = 8\nmicro_batch = 8\n[optim]\nlr = 1e-3\n";
        let file = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap();
            dir.path().join(name)
        };
        let path = file("c.toml", base);
        let error =
            |path: &std::path::Path, set: &str| format!("{:#}", TrainConfig::load(path, &[set.into()]).unwrap_err());
        for (set, want) in [
            ("checkpoint.failed_writes_tolerated=1.5", "expected a whole number, found 1.5"),
            ("optim.spike_window=127.6", "expected a whole number, found 127.6"),
            ("model.init.diva=nan", "expected true or false, found nan or inf"),
            ("optim.clip_decay=0", "expected true or false, found 0"),
            ("optim.ema_decay=\"0\"", "expected a number as TOML writes one (0.001, 1e-3; not in quotes), found \"0\""),
        ] {
            let key = set.split('=').next().unwrap();
            assert!(error(&path, set).ends_with(&format!("--set {key}: at `{key}`: {want}")), "{}", error(&path, set));
        }
        // spellings TOML does not write but a shell does; a text key keeps them as typed
        let cfg = TrainConfig::load(
            &path,
            &[".001", "TRUE", "5."].map(|v| v.to_string()).map(|v| match v.as_str() {
                ".001" => format!("optim.lr={v}"),
                "TRUE" => format!("optim.clip_decay={v}"),
                _ => format!("run.dir={v}"),
            }),
        )
        .unwrap();
        assert_eq!((cfg.optim.lr, cfg.optim.clip_decay, cfg.run.dir.to_str()), (Some(0.001), true, Some("5.")));
        // (and those keys at their defaults are still left out of the config as written)
        let cfg = TrainConfig::load(&path, &["optim.spike_window=128".into()]).unwrap();
        assert!(!toml::to_string(&cfg).unwrap().contains("spike_window"));
        let e = error(&path, "data.mix[-1].dir=d");
        assert!(e.contains("an array's elements count from 0 (`data.mix[0].weight`), not from its end"), "{e}");
        let e = format!("{:#}", TrainConfig::load(&file("empty.toml", " \n"), &[]).unwrap_err());
        assert!(e.contains("empty.toml: the file is empty"), "{e}");
        file("a.toml", "extends = \"b.toml\"\n");
        let b = file("b.toml", "extends = \"a.toml\"\n");
        let e = format!("{:#}", TrainConfig::load(&b, &[]).unwrap_err());
        assert_eq!(e.matches("makes a cycle").count(), 1, "{e}");
        assert!(e.contains("b.toml extends") && e.contains("a.toml extends"), "{e}");
    }

    /// A bare weights file's config reads its model, data.dir and run.precision alone, but a `--set` of
    /// a key no training config has (a misspelling) is refused, as `infinity train` refuses it; numbers
    /// in a variable's name are an array's elements, as `--set` writes them.
    #[test]
    fn a_model_parts_overrides_name_keys_of_a_training_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "[model]\npreset = \"tiny\"\nconditioning = \"class\"\n").unwrap();
        let load = |set: &str| super::ModelPart::load(&path, &[set.into()]).map(|_| ()).map_err(|e| format!("{e:#}"));
        for set in ["optim.lr=1", "run.precision=bf16", "data.mix[0].weight=2", "optim.decay.kind=cosine"] {
            assert_eq!(load(set), Ok(()), "{set}");
        }
        for (set, key, why) in [
            ("run.precison=bf16", "run.precison", "unknown field `precison`"),
            ("modle.depth=3", "modle.depth", "unknown field `modle`"),
            ("optim.lr.x=1", "optim.lr.x", "invalid type: map"),
        ] {
            let e = load(set).unwrap_err();
            assert!(e.starts_with(&format!("--set {set}: {key} is not a key of a training config ({why}")), "{e}");
        }
        assert_eq!(super::inf_var_key("INF__DATA__MIX__0__WEIGHT").as_deref(), Some("data.mix[0].weight"));
        assert_eq!(super::inf_var_key("INF__VAL__SETS__12__DIR").as_deref(), Some("val.sets[12].dir"));
    }

    #[test]
    fn keys_overlap_where_one_holds_the_other() {
        use super::keys_overlap;
        assert!(keys_overlap("optim.decay", "optim.decay.min_ratio") && keys_overlap("optim.decay.min_ratio", "optim"));
        assert!(keys_overlap("optim.lr", "optim.lr"));
        assert!(!keys_overlap("optim.lr", "optim.lr_min") && !keys_overlap("val.seed", "run.seed"));
        assert!(keys_overlap("data.mix", "data.mix[0].weight") && !keys_overlap("data.mix", "data.mixes"));
    }
}
