//! What a config error says: the key as the user wrote it (not serde's path), where its value came from
//! (the file, or the file of `extends` that set it, an `INF__…` variable, a `--set`), and the values a
//! key allows.

use std::path::Path;

use super::{inf_var_key, keys_overlap, value_at, Given};

/// How [`source_of`] names an `INF__…` variable: `INF__RUN__STEPS (in the environment)`.
pub(super) const IN_THE_ENVIRONMENT: &str = " (in the environment)";

/// Where the value at `key` came from, for an error about it: a `--set` override, an `INF__…` variable,
/// or the config file.
pub(super) fn source_of(key: &str, given: &Given) -> String {
    let (path, overrides) = (given.path, given.overrides);
    // the key itself or a table around it; the last override wins
    let related = |k: &str| keys_overlap(k, key);
    let mut set = overrides.iter().rev().filter_map(|o| o.split_once('=')).map(|(k, _)| k.trim());
    if let Some(k) = set.find(|k| related(k)) {
        return format!("--set {k}");
    }
    let var = given.vars.iter().find(|(v, _)| inf_var_key(v).is_some_and(|k| related(&k)));
    match var {
        Some((v, _)) => format!("{v}{IN_THE_ENVIRONMENT}"),
        None => file_setting(key, path).display().to_string(),
    }
}

/// Where a key found missing should have come from: a `--set` or `INF__…` variable that made its table
/// (one the files lack below a section: `data.mix[0].weight`) or chose its kind (`optim.decay.kind`,
/// whose kind asks for the missing key); else the config file. A section's keys (`[run]`, `[model]`)
/// are the file's to give, whatever overrides set beside them (a table `--set run={…}` merges).
pub(super) fn source_of_missing(key: &str, given: &Given) -> String {
    let (path, overrides) = (given.path, given.overrides);
    let file = || file_setting(key, path).display().to_string();
    let Some((table, _)) = key.rsplit_once('.').filter(|(t, _)| t.contains(['.', '['])) else { return file() };
    let made = setting_file(table, path).is_none();
    let in_table = |k: &str| {
        k == table
            || k.strip_prefix(table) == Some(".kind")
            || (made && k.strip_prefix(table).is_some_and(|r| r.starts_with('.')))
    };
    let mut set = overrides.iter().rev().filter_map(|o| o.split_once('=')).map(|(k, _)| k.trim());
    if let Some(k) = set.find(|k| in_table(k)) {
        return format!("--set {k}");
    }
    match given.vars.iter().find(|(v, _)| inf_var_key(v).is_some_and(|k| in_table(&k))) {
        Some((v, _)) => format!("{v}{IN_THE_ENVIRONMENT}"),
        None => file(),
    }
}

/// The file of `path` and the files it `extends` that sets `key`, the nearest to `path` first (`path`
/// where none does, or one does not read).
pub(super) fn file_setting(key: &str, path: &Path) -> std::path::PathBuf {
    setting_file(key, path).unwrap_or_else(|| path.to_path_buf())
}

/// The file of `path` and the files it `extends` that sets `key`, the nearest to `path` first; none
/// where none does (or one does not read).
pub(super) fn setting_file(key: &str, path: &Path) -> Option<std::path::PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..=8 {
        let table = std::fs::read_to_string(&at).ok().and_then(|t| t.parse::<toml::Table>().ok())?;
        if value_at(&table, key).is_some() {
            return Some(at);
        }
        let base = table.get("extends").and_then(|v| v.as_str())?;
        at = at.parent().unwrap_or(Path::new(".")).join(base);
    }
    None
}

/// The key and the message of a config error as they read best: the config crate's own key path
/// dropped (it spells a field after an index `data.mix[0]dir`), a missing field at its own key, an
/// unknown variant by its value (the crate's message names the Rust enum: "enum DeviceChoice does not
/// have variant constructor gpu").
pub(super) fn plain_message(key: &str, inner: &str) -> (String, String) {
    let inner = inner.split(" for key `").next().unwrap_or(inner);
    if let Some((_, rest)) = inner.split_once("does not have variant constructor ") {
        return (key.to_string(), format!("unknown value `{rest}`"));
    }
    if let Some(field) = inner.strip_prefix("missing configuration field \"").and_then(|r| r.strip_suffix('"')) {
        let name = field.rsplit(['.', ']']).next().unwrap_or(field);
        let full = if key == "." || key.is_empty() { name.to_string() } else { format!("{key}.{name}") };
        let what = match full.as_str() {
            "optim" => "missing: the [optim] table, with optim.lr or optim.lr_per_256 (the peak learning rate)",
            _ => "missing: a required key",
        };
        return (full, what.to_string());
    }
    if let Some(found) = inner
        .strip_prefix("invalid type: 64-bit integer `")
        .and_then(|r| r.split_once('`'))
        .filter(|(_, rest)| rest.contains("expected an unsigned"))
        .map(|(v, _)| v)
    {
        return (key.to_string(), format!("expected a whole number ≥ 0, found {found}"));
    }
    (key.to_string(), inner.to_string())
}

/// A `--set` of an array's element past its end (`data.mix[5].weight` where `data.mix` has fewer):
/// the config crate fills the elements before it with nothing, which is then refused at the first.
pub(super) fn set_past_the_end(key: &str, what: &str, given: &Given) -> Option<String> {
    let array = key.strip_suffix(']')?.rsplit_once('[')?.0;
    if !what.contains("unit value") {
        return None;
    }
    // (the override of the highest index into the array: the one past its end)
    let index = |k: &str| -> Option<usize> {
        let r = k.strip_prefix(array)?.strip_prefix('[')?;
        r[..r.find(']')?].parse().ok()
    };
    // (of the overrides and the variables: `INF__DATA__MIX__3__WEIGHT` is `data.mix[3].weight`)
    let sets = given.overrides.iter().filter_map(|o| Some((format!("--set {o}"), o.split_once('=')?.0.trim().into())));
    let vars = given.vars.iter().filter_map(|(v, _)| Some((format!("{v}{IN_THE_ENVIRONMENT}"), inf_var_key(v)?)));
    let (source, _) =
        sets.chain(vars).filter_map(|(s, k): (String, String)| Some((s, index(&k)?))).max_by_key(|(_, i)| *i)?;
    Some(format!(
        "{source}: an element past the end of `{array}` (the elements before it would be empty): add `{array}` \
         entries in order, or give the element in the config file"
    ))
}

/// The values an enumerated key takes, for its error (serde's own message names the Rust type).
pub(super) fn allowed_values(key: &str, error: &str) -> &'static str {
    match key {
        // (a known kind without its fields is reported at the table too)
        "optim.decay" if error.contains("missing") && !error.contains("kind") => {
            " (\"cosine\" and \"linear\" take min_ratio; \"wsd\" takes decay_fraction and min_ratio)"
        }
        "run.precision" => " (expected \"f32\" or \"bf16\")",
        "run.device" => " (expected \"cpu\", \"cuda\" or \"auto\")",
        "dist.backend" => " (expected \"auto\", \"ring\" or \"nccl\")",
        "loss.bitloss" => " (expected \"mean\" or \"sum\")",
        "optim.decay" | "optim.decay.kind" => " (expected kind = \"constant\", \"cosine\", \"linear\" or \"wsd\")",
        _ => "",
    }
}
