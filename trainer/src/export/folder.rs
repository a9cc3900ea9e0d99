//! Where an export may go: not a run folder, its checkpoints or a dataset (their readers would take the
//! export for theirs), not inside a checkpoint a run prunes, not over the weights it exports, not over
//! another export's files; and the folder locked while the export writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::{resolved, EXPORT_FORMAT, SHARD_INDEX};
use crate::train::checkpoint::{self, DONE, STATE_FILE};
use crate::train::rundir::RUN_FILES;

/// An exclusive `flock` on the export folder itself (no lock file left among the export's files),
/// held while the returned handle lives; a file system without locks on folders is warned of.
pub(super) fn lock_folder(folder: &Path) -> Result<Option<std::fs::File>> {
    use infinity_data::file_lock::{try_lock, Lock};
    let dir = match std::fs::File::open(folder) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::warn!("{} cannot be locked ({e}): nothing stops a second export into it", folder.display());
            return Ok(None);
        }
    };
    match try_lock(&dir, Lock::Exclusive) {
        Ok(true) => Ok(Some(dir)),
        Ok(false) => bail!(
            "{}: another `infinity export` is writing into it; wait for it to end, or export into another folder",
            folder.display()
        ),
        Err(e) => {
            tracing::warn!("{} cannot be locked here ({e}): nothing stops a second export into it", folder.display());
            Ok(None)
        }
    }
}

/// The checkpoint folder (one holding [`DONE`] or [`STATE_FILE`]) that `folder` is or lies inside, from
/// the file-system root: a run prunes its old checkpoints whole.
pub(super) fn enclosing_checkpoint(folder: &Path) -> Option<PathBuf> {
    // (links and `..` resolved; the folders still to be made hold nothing)
    let led = crate::train::config::where_it_leads(folder)?;
    led.ancestors().find(|p| p.join(DONE).is_file() || p.join(STATE_FILE).is_file()).map(Path::to_path_buf)
}

/// Refuse a run folder, its `checkpoints/` folder or a dataset as the export's folder: `infinity
/// sample RUN` would read the export (and go on reading it as the run trains on) instead of the run's
/// newest checkpoint, and a dataset folder would hold files its readers do not expect.
pub(super) fn refuse_a_run_or_dataset(folder: &Path) -> Result<()> {
    // (by what a run leaves: a folder merely named `checkpoints`, or holding one, is not a run's)
    let is_run = |p: &Path| !checkpoint::complete(p).is_empty() || RUN_FILES.iter().any(|f| p.join(f).is_file());
    let what = if is_run(folder) {
        "a run folder (`infinity sample` would read the export in place of its newest checkpoint)"
    } else if folder.file_name().is_some_and(|n| n == "checkpoints")
        && folder.parent().is_some_and(|run| !checkpoint::complete(run).is_empty())
    {
        "a run's checkpoints folder"
    } else if folder.join(infinity_data::manifest::MANIFEST_FILE).is_file() {
        "a dataset folder"
    } else {
        return Ok(());
    };
    bail!("{}: {what}; export into a folder of its own", folder.display())
}

/// Refuse to write `out` (in `folder`) over the weights file `source` it exports, or into the folder of
/// weight files (with their index) `source` names: the weights read would be replaced by the export.
pub(super) fn refuse_the_source(source: &Path, out: &Path, folder: &Path) -> Result<()> {
    let files_folder = match source.is_dir() {
        true => Some(resolved(source)),
        false if crate::model::weight_shards::is_index(source) => source.parent().map(resolved),
        false => None,
    };
    if resolved(out) == resolved(source) || files_folder.is_some_and(|f| f == resolved(folder)) {
        bail!(
            "-o {}: the weights being exported ({}) are there; export into another file or folder",
            out.display(),
            source.display()
        );
    }
    Ok(())
}

/// Refuse a `folder` whose config.json or shard index describes weights other than `file` that are
/// still there: this export would rewrite both for `file`, leaving the other weights described by
/// another file's dtype and names (re-exporting `file` itself is fine). A config.json that is not an
/// export's is refused too, rather than overwritten. Whether either describes `file` itself.
pub(super) fn refuse_another_export(folder: &Path, file: &str) -> Result<bool> {
    let mut described = Vec::new();
    let config = folder.join("config.json");
    if config.is_file() {
        let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        ensure!(
            v["format"] == EXPORT_FORMAT,
            "{}: not the config.json of an `infinity export` (no \"format\": \"{EXPORT_FORMAT}\"), which this \
             export would overwrite: export into a folder of its own",
            config.display()
        );
        described.extend(v["weights"].as_str().map(str::to_string));
    }
    let index = folder.join(SHARD_INDEX);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let map = v["weight_map"].as_object();
        described.extend(map.into_iter().flat_map(|m| m.values()).filter_map(|f| f.as_str().map(str::to_string)));
    }
    if let Some(other) = described.iter().find(|w| w.as_str() != file && folder.join(w).is_file()) {
        bail!(
            "{}: holds the export {other}, which its config.json and {SHARD_INDEX} describe; exporting {file} there \
             would rewrite both for {file} (its dtype, its names), so loaders and tools/check_export.py would misread \
             {other}: export into a folder of its own",
            folder.display()
        );
    }
    Ok(described.iter().any(|w| w == file))
}
