//! What the config crate changes on the way from the text as written to the typed config, found by
//! comparing the merged values as given with the typed config read back: conversions a user did not
//! ask for are refused ([`converted`]), and text keys set by `--set` or an `INF__…` variable keep their
//! text ([`keep_text`]): both layers read `1e3` as a number, which a folder named `1e3` is not.

use std::cell::Cell;

use serde_json::Value as V;

use super::load::inf_var_key;

thread_local! {
    /// Whether the config now serialising writes every key, those at their default too ([`every_key`]).
    static EVERY_KEY: Cell<bool> = const { Cell::new(false) };
}

/// `serialise` run with every key of a config written, those a config.toml leaves out at their default
/// too: the typed config read back, which [`converted`] compares key by key with the values given (a
/// `1.5` rounded to the default 2 of a whole-number key would be left out, and its rounding unseen),
/// and two configs compared key by key (`[model.init]` written whole for one key changed).
pub fn every_key<R>(serialise: impl FnOnce() -> R) -> R {
    /// Puts the switch back as it was, a panic or a nested call included.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            EVERY_KEY.set(self.0);
        }
    }
    let _restore = Restore(EVERY_KEY.replace(true));
    serialise()
}

/// Whether a key whose value is at its default (`at_default`) is left out of a config as written
/// (`skip_serializing_if`): it is, but while [`every_key`] serialises.
pub fn left_out(at_default: bool) -> bool {
    at_default && !EVERY_KEY.get()
}

/// Keys whose values may be quoted numbers (`data.micro_batch = "4"`, as `"auto"` is).
const QUOTED_NUMBERS: [&str; 2] = ["data.micro_batch", "run.peak_tflops"];

/// The first value of `given` (the config as written) that deserialising changed in `typed` (the
/// config read back): a fraction rounded to a whole number, a whole number too large for its key
/// saturated, a quoted number or boolean taken as one, a boolean taken as a number or a number as a
/// boolean, a number or boolean taken as text. The key, what was found and what was expected.
pub fn converted(given: &V, typed: &V, key: &str) -> Option<(String, String, String)> {
    let at = |k: &str| if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
    let found = |what: String, want: &str| Some((key.to_string(), what, want.to_string()));
    match (given, typed) {
        (V::Object(g), V::Object(t)) => g.iter().find_map(|(k, v)| converted(v, t.get(k)?, &at(k))),
        (V::Array(g), V::Array(t)) => {
            g.iter().zip(t).enumerate().find_map(|(i, (g, t))| converted(g, t, &format!("{key}[{i}]")))
        }
        (V::Number(n), V::Number(t)) if n.is_f64() && (t.is_i64() || t.is_u64()) => {
            let (x, read) = (n.as_f64().unwrap_or(f64::NAN), t.as_f64().unwrap_or(f64::NAN));
            if x.fract() != 0.0 {
                found(n.to_string(), "a whole number")
            } else if x != read {
                // (`steps = 1e20` is read as 18446744073709551615, `-1e3` as 0)
                let want = if x < 0.0 { "a whole number ≥ 0".to_string() } else { format!("a whole number ≤ {t}") };
                Some((key.to_string(), n.to_string(), want))
            } else {
                None
            }
        }
        // (nan and inf, which JSON holds as null: read as 0, the largest whole number, or true)
        (V::Null, V::Number(t)) if t.is_i64() || t.is_u64() => found("nan or inf".into(), "a whole number"),
        (V::Null, V::Bool(_)) => found("nan or inf".into(), "true or false"),
        (V::String(s), V::Number(_)) if !QUOTED_NUMBERS.contains(&key) => {
            found(format!("{s:?}"), "a number as TOML writes one (0.001, 1e-3; not in quotes)")
        }
        (V::String(s), V::Bool(_)) => found(format!("{s:?}"), "true or false (without quotes)"),
        // (the config crate reads true as 1 and 1 as true)
        (V::Bool(b), V::Number(_)) => found(b.to_string(), "a number"),
        (V::Number(n), V::Bool(_)) => found(n.to_string(), "true or false"),
        // (`dir = 1e3` reads as the folder `1000`)
        (V::Number(_) | V::Bool(_), V::String(_)) => found(given.to_string(), "text in quotes"),
        _ => None,
    }
}

/// Text keys (a folder, a name) set by an `INF__…` variable in `vars` or a `--set` in `overrides` get
/// their text as typed, in `given` (the merged values) and `typed` (the config read back), where either
/// layer read it as a number or boolean. Whether `typed` changed.
pub fn keep_text(given: &mut V, typed: &mut V, overrides: &[String], vars: &[(String, String)]) -> bool {
    let from_vars = vars.iter().filter_map(|(var, value)| Some((inf_var_key(var)?, value.trim().to_string())));
    // (a later --set over an earlier and over the variables)
    let from_sets = overrides.iter().filter_map(|o| o.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim()));
    // (of each key, the text its last layer gave: the one the merged value came from)
    let mut last: Vec<(String, String)> = Vec::new();
    for (key, text) in from_vars.chain(from_sets.map(|(k, v)| (k, v.to_string()))) {
        last.retain(|(k, _)| *k != key);
        last.push((key, text));
    }
    let mut changed = false;
    for (key, text) in last {
        let (Some(g), Some(t)) = (at_mut(given, &key), at_mut(typed, &key)) else { continue };
        if matches!(g, V::Number(_) | V::Bool(_)) && t.is_string() {
            *g = V::String(text.clone());
            *t = V::String(text);
            changed = true;
        }
    }
    changed
}

/// The value at dotted `key` (`data.mix[0].dir`) in `v`.
fn at_mut<'v>(v: &'v mut V, key: &str) -> Option<&'v mut V> {
    let mut at = v;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, i)) => (name, Some(i.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (part, None),
        };
        at = at.as_object_mut()?.get_mut(name)?;
        if let Some(i) = index {
            at = at.as_array_mut()?.get_mut(i)?;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversions_are_named_with_what_was_due() {
        let c = |g: V, t: V| converted(&json!({ "run": { "k": g } }), &json!({ "run": { "k": t } }), "");
        let want = |found: &str, want: &str| Some(("run.k".to_string(), found.to_string(), want.to_string()));
        assert_eq!(c(json!(2.5), json!(3)), want("2.5", "a whole number"));
        assert_eq!(c(json!(1e20), json!(u64::MAX)), want("1e+20", "a whole number ≤ 18446744073709551615"));
        assert_eq!(c(json!(-1e3), json!(0)), want("-1000.0", "a whole number ≥ 0"));
        assert_eq!(c(json!(1e3), json!(1000)), None);
        assert_eq!(c(json!(1e3), json!("1000")), want("1000.0", "text in quotes"));
        assert_eq!(c(json!("3"), json!(3)), want("\"3\"", "a number as TOML writes one (0.001, 1e-3; not in quotes)"));
        assert_eq!(c(json!("x"), json!("x")), None);
        assert_eq!(c(json!(f64::INFINITY), json!(u64::MAX)), want("nan or inf", "a whole number"));
        assert_eq!(c(json!(f64::NAN), json!(true)), want("nan or inf", "true or false"));
    }

    #[test]
    fn text_keys_keep_what_was_typed() {
        let mut given = json!({ "run": { "dir": 16, "steps": 3 }, "data": { "mix": [{ "dir": 1000.0 }] } });
        let mut typed = json!({ "run": { "dir": "16", "steps": 3 }, "data": { "mix": [{ "dir": "1000" }] } });
        let sets = ["data.mix[0].dir=1e3".to_string(), "run.steps=3".to_string()];
        let vars = [("INF__RUN__DIR".to_string(), "0x10".to_string())];
        assert!(keep_text(&mut given, &mut typed, &sets, &vars));
        assert_eq!(typed, json!({ "run": { "dir": "0x10", "steps": 3 }, "data": { "mix": [{ "dir": "1e3" }] } }));
        assert_eq!(given, typed);
        assert!(!keep_text(&mut given, &mut typed, &sets, &vars));
        // (one key in two layers: the later one's text, as the merged value is the later one's)
        let mut given = json!({ "run": { "dir": 16 } });
        let mut typed = json!({ "run": { "dir": "16" } });
        let sets = ["run.dir=1e3".to_string(), "run.dir=16".to_string()];
        assert!(keep_text(&mut given, &mut typed, &sets, &[("INF__RUN__DIR".to_string(), "abc".to_string())]));
        assert_eq!(typed, json!({ "run": { "dir": "16" } }));
    }
}
