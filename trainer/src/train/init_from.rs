//! `model.init_from`: a fresh run's weights from another model's (a checkpoint or run folder, an
//! export, a weights file), what that model trained on set beside this run's dataset (another
//! tokenizer's bits mean other images; class rows are taken by index), and the record of where the
//! weights came from that the run's checkpoints, `derived.json` and exports keep.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use infinity_data::Manifest;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, DONE};
use super::config::TrainConfig;
use crate::model::{Layout, ModelConfig, Params};

/// Where a fine-tuning run's first weights came from, as its checkpoints keep it (`state.json`'s
/// `init_from`), `derived.json` shows it and its exports carry it (`source.init_from`).
/// (No `deny_unknown_fields`: a record only, which a later build may add to.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitSource {
    /// `model.init_from` as the run was given it (absolute).
    pub path: PathBuf,
    /// The weights file read: a run folder's newest checkpoint at the time, an export's weights.
    pub file: PathBuf,
    /// `"trained"`, or `"ema"`: the source's moving average of its weights (`model.init_from_ema`, or an
    /// export made with `--ema`).
    pub weights: String,
    /// The source checkpoint's step and its file's crc32c (as its `state.json` records them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    /// An export's own source, in words (`/runs/pre/checkpoints/step-00000200, step 200`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_of: Option<String>,
    /// The tokenizer the source's bits came from (`infinity_data::tokenizer::identity`), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
}

/// A fresh start from `model.init_from`: where the weights came from, in words and as recorded; the
/// tensors kept fresh or left out; and what differs between the source's data and the run's.
pub(crate) struct Started {
    pub said: String,
    pub fresh: Vec<String>,
    pub record: InitSource,
    pub warnings: Vec<String>,
}

impl Started {
    /// Where the weights came from, said on every rank; what was kept fresh and what differs from the
    /// source's data, warned of by the `leader` alone.
    pub(crate) fn say(&self, leader: bool) {
        console!("{} ({} kept fresh or left out)", self.said, crate::cli::plural(self.fresh.len(), "tensor"));
        if !leader {
            return;
        }
        if !self.fresh.is_empty() {
            tracing::warn!("model.init_from: kept fresh or left out:\n  {}", self.fresh.join("\n  "));
        }
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
    }
}

/// The error for a `model.init_from` that is not there.
pub(crate) fn missing(p: &Path) -> anyhow::Error {
    let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "?".into());
    let relative = match p.is_relative() {
        true => format!(" (a relative path is read from the folder infinity train runs in, {cwd})"),
        false => String::new(),
    };
    anyhow::anyhow!("model.init_from: {} does not exist{relative}", p.display())
}

/// `model.init_from`'s weights (or with `model.init_from_ema` their moving average) over the fresh ones
/// in `p` (nothing without it), for a run on the dataset of `data` (its first part's folder and manifest).
pub(crate) fn init_from(
    cfg: &TrainConfig,
    (mc, lay): (&ModelConfig, &Layout),
    p: &mut Params<f32>,
    data: (&Path, &Manifest),
) -> Result<Option<Started>> {
    let Some(from) = &cfg.model.init_from else { return Ok(None) };
    if !from.exists() {
        return Err(missing(from));
    }
    // (an export's index or config.json: the export, checked and recorded as its folder is)
    let from = &checkpoint::export_of_own_file(from).unwrap_or_else(|| from.clone());
    let ema = cfg.model.init_from_ema;
    let (file, which) = checkpoint::weights_file(from, ema).context("model.init_from")?;
    let fresh = crate::model::io::init_from_weights(&file, which, mc, lay, p).context("model.init_from")?;
    // (a PyTorch file's reader says so itself; a checkpoint's file is looked for, not read: a note needs
    // no checksum, and a run that does not take the average must not fail on it)
    let keeps_average = || checkpoint::resolve(from).is_ok_and(|dir| dir.join(checkpoint::EMA_FILE).is_file());
    if !ema && cfg.optim.ema_decay == 0.0 && !from.is_file() && keeps_average() {
        tracing::info!(
            "{} also keeps a moving average of the weights: model.init_from_ema starts from it",
            from.display()
        );
    }
    let source = Source::of(&file);
    // (a checkpoint's ema.safetensors given as a file is the average too)
    let average = ema || source.export.as_ref().is_some_and(|e| e.ema) || checkpoint::is_checkpoints_average(&file);
    let detail = match &source.export {
        Some(e) if e.ema => format!(" (an export of {}: the moving average of its weights)", e.source),
        Some(e) => format!(" (an export of {})", e.source),
        None if average => " (the moving average of the source's weights)".into(),
        None => String::new(),
    };
    let said = format!("weights from {}{detail}", file.display());
    // (absolute: the record is read from anywhere later)
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let record = InitSource {
        path: absolute(from),
        file: absolute(&file),
        weights: if average { "ema" } else { "trained" }.into(),
        step: source.state.as_ref().map(|s| s.step),
        crc32c: source.state.as_ref().and_then(|s| checkpoint::recorded_crc(s, &file)),
        export_of: source.export.as_ref().map(|e| e.source.clone()),
        tokenizer: source.tokenizer.clone(),
    };
    let warnings = source.differences(from, data);
    Ok(Some(Started { said, fresh, record, warnings }))
}

/// What is known of the model a weights file came from: the checkpoint holding it (its saved state),
/// the export holding it, and the dataset it trained on (its tokenizer and manifest), where at hand.
struct Source {
    state: Option<checkpoint::TrainState>,
    export: Option<crate::export::ExportFolder>,
    tokenizer: Option<String>,
    manifest: Option<Manifest>,
}

impl Source {
    fn of(file: &Path) -> Source {
        let dir = file.parent().unwrap_or(Path::new("."));
        let state = dir.join(DONE).is_file().then(|| checkpoint::read_state(dir).ok()).flatten();
        let export = checkpoint::export_holding(file);
        let (tokenizer, manifest) = match (&state, &export) {
            // (the checkpoint's position names its tokenizer; the dataset its config names, if still there)
            (Some(s), _) => {
                let data = checkpoint::data_dir_of(dir).ok().and_then(|d| Manifest::load(&d).ok());
                (s.loader.tokenizer.clone(), data)
            }
            // (an export describes its dataset, the tokenizer file beside it or in the dataset)
            (None, Some(_)) => match crate::export::export_dataset(dir) {
                Some((m, tokenizer_dir)) => (Some(infinity_data::tokenizer::identity(&tokenizer_dir, &m)), Some(m)),
                None => (None, None),
            },
            (None, None) => (None, None),
        };
        Source { state, export, tokenizer, manifest }
    }

    /// Warnings where the source trained on other data than `data` in ways the weights cannot show:
    /// another tokenizer's bits, or classes of other names at the same indices.
    fn differences(&self, from: &Path, (dir, m): (&Path, &Manifest)) -> Vec<String> {
        let mut out = Vec::new();
        let ours = infinity_data::tokenizer::identity(dir, m);
        if let Some(theirs) = &self.tokenizer {
            if !infinity_data::tokenizer::same_identity(theirs, &ours) {
                out.push(format!(
                    "model.init_from: {} trained on bits of another tokenizer ({theirs}) than data.dir {} ({ours}): \
                     the same bits mean other images to it, so the run starts from a model of other images \
                     (tokenize the images with the source's tokenizer: `data pack --tokenizer` or `data synth \
                     --tokenizer` with its tokenizer file)",
                    from.display(),
                    dir.display()
                ));
            }
        }
        let names = |m: &Manifest| m.conditions.class.as_ref().map(|c| c.names.clone()).unwrap_or_default();
        if let Some(theirs) = self.manifest.as_ref().map(names) {
            let ours = names(m);
            let differ: Vec<String> = theirs
                .iter()
                .zip(&ours)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, (a, b))| format!("{i}: {a} → {b}"))
                .collect();
            if theirs.len() == ours.len() && !differ.is_empty() {
                const SHOWN: usize = 4;
                let more = if differ.len() > SHOWN { format!(", … {} in all", differ.len()) } else { String::new() };
                out.push(format!(
                    "model.init_from: {} learned classes of other names at the same indices ({}{more}): class_emb \
                     is taken row by row, so each class starts from another's embedding",
                    from.display(),
                    differ[..differ.len().min(SHOWN)].join(", ")
                ));
            }
        }
        out
    }
}
