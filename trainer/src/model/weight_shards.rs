//! Weights split over several files with an index: Hugging Face's `model.safetensors.index.json` or
//! `pytorch_model.bin.index.json`, whose `weight_map` names each tensor's file (upstream loads its 8B
//! so, with `load_sharded_checkpoint`). The files may be safetensors or PyTorch's (`torch_file`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// How an index file's name ends.
pub const INDEX_SUFFIX: &str = ".index.json";

/// Whether `path` names an index of weight files.
pub fn is_index(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(INDEX_SUFFIX))
}

/// The index that weighs for the folder `dir`: its one index, or `model.safetensors.index.json` beside
/// others (Hugging Face repositories often ship it with `pytorch_model.bin.index.json`; transformers
/// prefers it too); an error for several others, of which the one meant cannot be told.
pub fn index_in(dir: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
    let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| is_index(p) && p.is_file()).collect();
    found.sort();
    let preferred = dir.join("model.safetensors.index.json");
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ if found.contains(&preferred) => Ok(Some(preferred)),
        _ => {
            let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            bail!("{}: several weight indexes ({}): name one", dir.display(), names.join(", "))
        }
    }
}

/// The files an index names, each with the tensors it holds, in file name order.
pub fn shard_files(index: &Path) -> Result<Vec<(PathBuf, BTreeSet<String>)>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", index.display()))?;
    let map = v["weight_map"]
        .as_object()
        .with_context(|| format!("{}: no `weight_map` object (tensor name → file)", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, file) in map {
        let file =
            file.as_str().with_context(|| format!("{}: `weight_map.{name}` is not a file name", index.display()))?;
        // (a name, not a path: the files lie beside the index)
        let plain = matches!(Path::new(file).components().collect::<Vec<_>>()[..], [std::path::Component::Normal(_)]);
        ensure!(plain, "{}: `weight_map.{name}` = {file:?}: expected a file name beside the index", index.display());
        files.entry(file.to_string()).or_default().insert(name.clone());
    }
    ensure!(!files.is_empty(), "{}: an empty `weight_map`", index.display());
    let shards: Vec<(PathBuf, BTreeSet<String>)> = files.into_iter().map(|(f, names)| (dir.join(f), names)).collect();
    if let Some((missing, _)) = shards.iter().find(|(p, _)| !p.is_file()) {
        bail!("{}: names {}, which does not exist", index.display(), missing.display());
    }
    Ok(shards)
}
