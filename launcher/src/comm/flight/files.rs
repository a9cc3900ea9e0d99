//! The JSON files the ranks and the agents leave in a records' folder: written whole or not at all,
//! read back every file of a kind, in name order, and of one launch attempt, the newest.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Write `value` as `dir/name` (made if missing) through a temporary file renamed over it, so that a
/// reader never sees half of it.
pub(super) fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> std::io::Result<PathBuf> {
    let (path, tmp) = (dir.join(name), dir.join(format!(".{name}.tmp")));
    let text = serde_json::to_string_pretty(value).expect("records of strings and numbers");
    std::fs::create_dir_all(dir)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The files `PREFIX*.json` in `dir`, in name order, parsed as `T` and passed through `check`; a note
/// (`PATH: why`) for each that does not read, is not `what`, or that `check` refuses.
pub(super) fn read_all<T: DeserializeOwned>(
    dir: &Path,
    prefix: &str,
    what: &str,
    check: impl Fn(T) -> Result<T, String>,
) -> (Vec<T>, Vec<String>) {
    let (mut found, mut notes) = (Vec::new(), Vec::new());
    let Ok(rd) = std::fs::read_dir(dir) else { return (found, notes) };
    let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !(name.starts_with(prefix) && name.ends_with(".json")) {
            continue;
        }
        let read = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<T>(&t).map_err(|e| format!("not {what}: {e}")))
            .and_then(&check);
        match read {
            Ok(v) => found.push(v),
            Err(e) => notes.push(format!("{}: {e}", p.display())),
        }
    }
    (found, notes)
}

/// `items` split into those of the newest launch attempt (the run id and attempt of the one written
/// last, by `key`: `(unix_time, run_id, attempt)`) and the others.
pub(super) fn newest_attempt<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> (u64, Option<String>, Option<u32>),
) -> (Vec<T>, Vec<T>) {
    let newest = items.iter().map(&key).max_by_key(|k| k.0).map(|(_, run, attempt)| (run, attempt));
    items.into_iter().partition(|i| {
        let (_, run, attempt) = key(i);
        Some((run, attempt)) == newest
    })
}
