//! The `INF__SECTION__KEY` environment variables a config reads: which key each sets (a number is an
//! array's element), their values read as `--set` reads its own, two spellings of one key refused, and
//! which of them a load takes (for the "from the environment" banner).

use std::path::Path;

use anyhow::{bail, Result};

use super::super::tagged::value_within;
use super::{keys_overlap, merged, Env};

/// The `INF__SECTION__KEY` variables set in this process's environment, as (variable, value), sorted.
/// The prefix is matched in any case, as the config crate matches it.
pub fn inf_vars() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| inf_var_key(k).is_some())
        .collect();
    vars.sort();
    vars
}

/// The config key an `INF__…` variable sets (`INF__OPTIM__LR` → `optim.lr`; a number is an array's
/// element, `INF__DATA__MIX__0__WEIGHT` → `data.mix[0].weight`, as `--set` writes it), if it is one.
pub fn inf_var_key(var: &str) -> Option<String> {
    let rest = var.get(..5).filter(|p| p.eq_ignore_ascii_case("INF__")).map(|_| &var[5..])?;
    let mut key = String::new();
    for part in rest.to_lowercase().split("__") {
        match part.parse::<usize>() {
            Ok(i) if !key.is_empty() && !part.starts_with('+') => key += &format!("[{i}]"),
            _ if key.is_empty() => key += part,
            _ => key += &format!(".{part}"),
        }
    }
    Some(key)
}

/// The `INF__…` variables, as a source of the config beneath the `--set` overrides: each key with its
/// value read as a `--set`'s (TOML: `0x10`, `1_000`, `[1, 2]`; anything else text; a whole number
/// beyond 64 bits refused), where the `config` crate's own reader takes `0x10` for text and rounds a
/// number beyond 64 bits.
#[derive(Clone, Debug)]
pub(super) struct InfSource(pub(super) Vec<(String, config::Value)>);

impl config::Source for InfSource {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.iter().cloned().collect())
    }
}

/// The `INF__…` variables a load of `path` with `overrides` takes, as (key, value): not those a later
/// layer left out (the other of two alternatives, the keys another `optim.decay` kind does not take),
/// nor those a `--set` of the same key (or of a table holding it) replaces.
pub fn vars_taken(path: &Path, overrides: &[String]) -> Result<Vec<(String, String)>> {
    let given = merged(path, overrides, Env::Read)?;
    // (a table merges key by key, replacing the keys it holds; any other value replaces all below it)
    let replaced = |key: &str| {
        overrides.iter().filter_map(|o| o.split_once('=')).any(|(k, v)| {
            let (k, v) = (k.trim(), v.trim());
            value_within(k, v, key).is_some() || (keys_overlap(k, key) && key.len() > k.len() && !v.starts_with('{'))
        })
    };
    let taken = given.vars.iter().filter_map(|(var, v)| Some((inf_var_key(var)?, v.trim().to_string())));
    Ok(taken.filter(|(key, _)| !replaced(key)).collect())
}

/// The `INF__…` variables the config reads: the process's, or fewer once one is left out.
pub(in crate::train::config) struct InfVars {
    pub(in crate::train::config) vars: Vec<(String, String)>,
    /// Whether a variable was left out (then the config reads `vars` instead of the process's).
    pub(in crate::train::config) dropped: bool,
}

impl InfVars {
    /// The process's variables; two spellings of one key (`INF__OPTIM__LR` and `inf__optim__lr`, which
    /// the config crate both reads) are refused: which one it applies depends on the environment's order.
    pub(super) fn of_process() -> Result<InfVars> {
        let vars = inf_vars();
        for (i, (a, _)) in vars.iter().enumerate() {
            if let Some((b, _)) = vars[i + 1..].iter().find(|(b, _)| inf_var_key(b) == inf_var_key(a)) {
                let key = inf_var_key(a).unwrap_or_default();
                bail!("{a} and {b} are both set in the environment: both set {key}; give one");
            }
        }
        Ok(InfVars { vars, dropped: false })
    }

    pub(super) fn sets(&self, key: &str) -> bool {
        self.value_of(key).is_some()
    }

    /// The value a variable gives `key`, if one does.
    pub(in crate::train::config) fn value_of(&self, key: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| inf_var_key(k).as_deref() == Some(key)).map(|(_, v)| v.as_str())
    }

    /// Leave out the variables of the keys `drop` says.
    pub(in crate::train::config) fn drop_where(&mut self, drop: impl Fn(&str) -> bool) {
        let before = self.vars.len();
        self.vars.retain(|(k, _)| !inf_var_key(k).is_some_and(|k| drop(&k)));
        self.dropped |= self.vars.len() != before;
    }

    pub(super) fn drop_key(&mut self, key: &str) {
        let before = self.vars.len();
        self.vars.retain(|(k, _)| inf_var_key(k).as_deref() != Some(key));
        self.dropped |= self.vars.len() != before;
    }
}
