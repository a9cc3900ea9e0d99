//! Tables whose `kind` chooses their other keys (`optim.decay`: `kind = "wsd"` takes `decay_fraction`
//! and `min_ratio`, `kind = "constant"` takes nothing). Layers of settings merge key by key, so a layer
//! that names another kind would keep the keys of the kind underneath it, which its own kind then
//! refuses (`--set optim.decay={ kind = "cosine", min_ratio = 0 }` over a wsd schedule would keep
//! `decay_fraction`). Here a layer that names a kind other than the one underneath it drops the keys
//! underneath that its kind does not take (keys both kinds take stay, as any key of a table does): the
//! file over the files it extends, an `INF__…` variable over the files, a `--set` over both and over
//! earlier ones.

use anyhow::Result;

use super::load::{value_at, InfVars};

/// The tables chosen by their `kind` key.
pub const TAGGED: [&str; 1] = ["optim.decay"];

/// The keys (besides `kind`) that the `kind` of `tagged` takes (`optim::Decay`'s variants), if it is
/// one of its kinds.
fn keys_of(tagged: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (tagged, kind) {
        ("optim.decay", "constant") => Some(&[]),
        ("optim.decay", "cosine" | "linear") => Some(&["min_ratio"]),
        ("optim.decay", "wsd") => Some(&["decay_fraction", "min_ratio"]),
        _ => None,
    }
}

/// Whether dotted `key` is a key inside `tagged` that its `kind` does not take (every key inside it for
/// a kind it does not have: the error names the kind).
pub fn foreign(key: &str, tagged: &str, kind: &str) -> bool {
    let Some(name) = key.strip_prefix(tagged).and_then(|r| r.strip_prefix('.')) else { return false };
    name != "kind" && !keys_of(tagged, kind).is_some_and(|keys| keys.contains(&name))
}

/// `table` without the keys of the table at dotted `tagged` that `kind` does not take.
pub fn drop_foreign(table: &mut toml::Table, tagged: &str, kind: &str) {
    let mut at = table;
    for part in tagged.split('.') {
        match at.get_mut(part).and_then(toml::Value::as_table_mut) {
            Some(t) => at = t,
            None => return,
        }
    }
    at.retain(|k, _| !foreign(&format!("{tagged}.{k}"), tagged, kind));
}

/// The value an override `key=text` gives the dotted `target`: the override's own value when it sets
/// `target`, or the part of a table it sets around it (`optim={ decay = { kind = "wsd" } }` gives
/// `optim.decay.kind` the value `"wsd"`). None when it does not set `target`. Plain text that TOML reads
/// as no value (`--set optim.decay.kind=cosine`) is a string.
pub fn value_within(key: &str, text: &str, target: &str) -> Option<toml::Value> {
    let rest = match target.strip_prefix(key) {
        Some("") => "",
        Some(r) if r.starts_with('.') => &r[1..],
        _ => return None,
    };
    let value = match toml::from_str::<toml::Table>(&format!("v = {}", text.trim())) {
        Ok(mut t) => t.remove("v")?,
        Err(_) => toml::Value::String(text.trim().to_string()),
    };
    if rest.is_empty() {
        return Some(value);
    }
    value_at(value.as_table()?, rest).cloned()
}

/// The `kind` each layer names for the [`TAGGED`] tables settled: where a layer names a kind other than
/// the one underneath it, the keys its kind does not take are taken out of the merged files (`table`),
/// the environment's variables of them left out and earlier `--set`s of them dropped. The environment
/// and the overrides to apply.
pub fn settle_kinds(
    table: &mut toml::Table,
    mut env: InfVars,
    overrides: Vec<String>,
) -> Result<(InfVars, Vec<String>)> {
    let mut kept = overrides;
    for tagged in TAGGED {
        let kind_key = format!("{tagged}.kind");
        let text = |v: &toml::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
        let mut kind = value_at(table, &kind_key).map(text);
        if let Some(var_kind) = env.value_of(&kind_key).map(|k| k.trim().to_string()) {
            if kind.as_ref() != Some(&var_kind) {
                drop_foreign(table, tagged, &var_kind);
            }
            kind = Some(var_kind);
        }
        let mut settled: Vec<String> = Vec::with_capacity(kept.len());
        for o in kept {
            let set = o.split_once('=').and_then(|(k, v)| value_within(k.trim(), v, &kind_key)).map(|v| text(&v));
            if let Some(new) = set.filter(|new| kind.as_ref() != Some(new)) {
                drop_foreign(table, tagged, &new);
                env.drop_where(|k| foreign(k, tagged, &new));
                settled.retain(|e| e.split_once('=').is_none_or(|(k, _)| !foreign(k.trim(), tagged, &new)));
                kind = Some(new);
            }
            settled.push(o);
        }
        kept = settled;
    }
    Ok((env, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> InfVars {
        InfVars { vars: v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), dropped: false }
    }

    fn sets(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Every kind's keys as `optim::Decay` takes them: each kind takes its keys and refuses another.
    #[test]
    fn the_kinds_keys_are_the_decays() {
        for kind in ["constant", "cosine", "linear", "wsd"] {
            let keys = keys_of("optim.decay", kind).unwrap();
            let table = |extra: &str| {
                let mut t = format!("kind = \"{kind}\"\n{extra}");
                keys.iter().for_each(|k| t.push_str(&format!("{k} = 0.5\n")));
                toml::from_str::<crate::optim::Decay>(&t)
            };
            assert!(table("").is_ok(), "{kind}");
            assert!(table("other = 1\n").is_err(), "{kind}");
        }
        assert!(keys_of("optim.decay", "cosin").is_none());
    }

    #[test]
    fn a_table_or_key_inside_an_override_is_found() {
        let s = |v: &str| Some(toml::Value::String(v.to_string()));
        assert_eq!(value_within("optim.decay.kind", "cosine", "optim.decay.kind"), s("cosine"));
        assert_eq!(value_within("optim.decay.kind", "\"wsd\"", "optim.decay.kind"), s("wsd"));
        assert_eq!(
            value_within("optim.decay", "{ kind = \"linear\", min_ratio = 0 }", "optim.decay.kind"),
            s("linear")
        );
        assert_eq!(value_within("optim", "{ decay = { kind = \"wsd\" } }", "optim.decay.kind"), s("wsd"));
        assert_eq!(value_within("optim", "{ lr = 1e-3 }", "optim.lr"), Some(toml::Value::Float(1e-3)));
        assert_eq!(value_within("optim", "{ lr = 1e-3 }", "optim.decay.kind"), None);
        assert_eq!(value_within("optim.decay.min_ratio", "0.1", "optim.decay.kind"), None);
        assert_eq!(value_within("optim.lr", "1", "optim.lr_per_256"), None);
    }

    #[test]
    fn a_layer_naming_another_kind_replaces_the_table() {
        let file = || -> toml::Table {
            "[optim]\nlr = 1e-3\n[optim.decay]\nkind = \"wsd\"\ndecay_fraction = 0.2\nmin_ratio = 0.1\n"
                .parse()
                .unwrap()
        };
        // the same kind: merged key by key, as any table
        let mut t = file();
        let (e, kept) =
            settle_kinds(&mut t, vars(&[]), sets(&["optim.decay={ kind = \"wsd\", min_ratio = 0 }"])).unwrap();
        assert!(t == file() && !e.dropped && kept.len() == 1);
        // another kind by --set: the keys it does not take out of the file, the environment and the
        // earlier --sets; the keys it takes stay
        let mut t = file();
        let over = sets(&["optim.decay.decay_fraction=0.3", "run.steps=3", "optim.decay.kind=cosine", "optim.lr=1"]);
        let env = vars(&[("INF__OPTIM__DECAY__DECAY_FRACTION", "0.5"), ("INF__OPTIM__CLIP", "1")]);
        let (e, kept) = settle_kinds(&mut t, env, over).unwrap();
        assert_eq!(t.to_string(), "[optim]\nlr = 0.001\n\n[optim.decay]\nkind = \"wsd\"\nmin_ratio = 0.1\n");
        assert!(e.dropped && e.vars == [("INF__OPTIM__CLIP".to_string(), "1".to_string())]);
        assert_eq!(kept, sets(&["run.steps=3", "optim.decay.kind=cosine", "optim.lr=1"]));
        // another kind in the environment; a kind that is none drops every key
        for (kind, keeps_min_ratio) in [("constant", false), ("cosin", false), ("linear", true)] {
            let mut t = file();
            let (e, _) = settle_kinds(&mut t, vars(&[("INF__OPTIM__DECAY__KIND", kind)]), vec![]).unwrap();
            let decay = value_at(&t, "optim.decay").unwrap().to_string();
            assert_eq!(decay.contains("min_ratio"), keeps_min_ratio, "{kind}: {decay}");
            assert!(!decay.contains("decay_fraction") && !e.dropped, "{kind}: {decay}");
        }
    }
}
