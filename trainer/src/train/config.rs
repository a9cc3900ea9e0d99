//! The typed training config: TOML file, then `INF__SECTION__KEY` environment variables, then
//! `--set section.key=value` overrides (in that order of precedence, lowest first). Unknown keys are
//! errors naming their path; everything is validated before anything is allocated.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::{Conditioning, ModelConfig};
use crate::optim::{AdamWConfig, Decay, LrSchedule};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunConfig,
    pub model: ModelSection,
    pub data: DataSection,
    pub optim: OptimSection,
    #[serde(default)]
    pub bsc: BscSection,
    #[serde(default)]
    pub loss: LossSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run folder: config, logs, checkpoints.
    pub dir: PathBuf,
    /// Seeds initialisation, data order, flips and condition dropout.
    pub seed: u64,
    /// Optimiser steps.
    pub steps: u64,
    /// Log every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
}

fn default_log_every() -> u64 {
    10
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A preset of `ModelConfig::preset` (tiny, small, layer12 … 2b).
    pub preset: String,
    pub depth: Option<usize>,
    pub embed_dim: Option<usize>,
    pub num_heads: Option<usize>,
    pub mlp_ratio: Option<f64>,
    /// `"class"` (VAR-style) or `"text"` (upstream Infinity); must match the dataset's conditions.
    pub conditioning: String,
    /// Probability of dropping a sample's condition (classifier-free guidance).
    #[serde(default = "default_cond_drop")]
    pub cond_drop_rate: f64,
}

fn default_cond_drop() -> f64 {
    0.1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub dir: PathBuf,
    /// Samples per optimiser step.
    pub global_batch: usize,
    /// Samples per forward/backward; `global_batch / micro_batch` micro-steps accumulate.
    pub micro_batch: usize,
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_workers() -> usize {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_constant")]
    pub decay: Decay,
    #[serde(default)]
    pub adamw: AdamWConfig,
    /// Global-norm clip (upstream `tclip`).
    #[serde(default = "default_clip")]
    pub clip: f64,
    /// Stop after this many consecutive steps with a non-finite loss or gradient norm.
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite: u64,
}

fn default_constant() -> Decay {
    Decay::Constant
}
fn default_clip() -> f64 {
    5.0
}
fn default_max_nonfinite() -> u64 {
    5
}

/// Bitwise self-correction (upstream `noise_apply_strength`, `noise_apply_layers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BscSection {
    pub p_max: f64,
    pub apply_layers: usize,
}

impl Default for BscSection {
    fn default() -> Self {
        BscSection { p_max: 0.3, apply_layers: 13 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSection {
    /// Upstream `reweight_loss_by_scale` (the formula it intends).
    #[serde(default)]
    pub reweight_by_scale: bool,
    #[serde(default)]
    pub label_smoothing: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps (and at the end); 0 = only at the end.
    pub every: u64,
    /// Keep the newest this many.
    pub keep_last: usize,
    /// Also keep every checkpoint whose step is a multiple of this (0 = none).
    pub keep_every: u64,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection { every: 100, keep_last: 2, keep_every: 0 }
    }
}

impl TrainConfig {
    /// Load `path`, apply `INF__…` environment variables and `key.path=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<TrainConfig> {
        let mut b =
            config::Config::builder().add_source(config::File::from(path).format(config::FileFormat::Toml)).add_source(
                config::Environment::with_prefix("INF").prefix_separator("__").separator("__").try_parsing(true),
            );
        for o in overrides {
            let (k, v) = o.split_once('=').with_context(|| format!("--set {o}: expected key.path=value"))?;
            b = b.set_override(k.trim(), v.trim())?;
        }
        let built = b.build().with_context(|| format!("reading {}", path.display()))?;
        let cfg: TrainConfig = serde_path_to_error::deserialize(built)
            .map_err(|e| anyhow::anyhow!("{}: at `{}`: {}", path.display(), e.path(), e.inner()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that need no data: everything else is checked against the dataset in `model_config`.
    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        if d.global_batch == 0 || d.micro_batch == 0 || !d.global_batch.is_multiple_of(d.micro_batch) {
            bail!(
                "data.global_batch ({}) must be a positive multiple of data.micro_batch ({})",
                d.global_batch,
                d.micro_batch
            );
        }
        if self.run.steps == 0 {
            bail!("run.steps must be positive");
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            bail!("optim.lr must be a positive number, found {}", self.optim.lr);
        }
        if !(0.0..1.0).contains(&self.bsc.p_max) {
            bail!("bsc.p_max must be in [0, 1), found {}", self.bsc.p_max);
        }
        if !(0.0..1.0).contains(&self.model.cond_drop_rate) {
            bail!("model.cond_drop_rate must be in [0, 1), found {}", self.model.cond_drop_rate);
        }
        if !matches!(self.model.conditioning.as_str(), "class" | "text") {
            bail!("model.conditioning must be \"class\" or \"text\", found {:?}", self.model.conditioning);
        }
        if self.checkpoint.keep_last == 0 {
            bail!("checkpoint.keep_last must be at least 1");
        }
        Ok(())
    }

    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.optim.lr,
            warmup_steps: self.optim.warmup_steps,
            warmup_start_ratio: 0.005,
            decay: self.optim.decay.clone(),
        }
    }

    /// The model for a dataset with `d` bits per token and the given conditions.
    /// `text`: the dataset's text width and maximum tokens per caption.
    pub fn model_config(
        &self,
        d: usize,
        num_classes: Option<usize>,
        text: Option<(usize, usize)>,
    ) -> Result<ModelConfig> {
        let m = &self.model;
        let mut c =
            ModelConfig::preset(&m.preset).with_context(|| format!("model.preset: unknown preset `{}`", m.preset))?;
        c.depth = m.depth.unwrap_or(c.depth);
        c.embed_dim = m.embed_dim.unwrap_or(c.embed_dim);
        c.num_heads = m.num_heads.unwrap_or(c.num_heads);
        c.mlp_ratio = m.mlp_ratio.unwrap_or(c.mlp_ratio);
        c.d = d;
        c.cond_drop_rate = m.cond_drop_rate;
        c.block_chunks = if c.depth % c.block_chunks == 0 { c.block_chunks } else { 1 };
        c.conditioning = match (m.conditioning.as_str(), num_classes, text) {
            ("class", Some(n), _) => Conditioning::Class { num_classes: n },
            ("text", _, Some((width, max_tokens))) => {
                c.text_channels = width;
                c.text_maxlen = max_tokens;
                Conditioning::Text
            }
            (kind, _, _) => bail!("model.conditioning = \"{kind}\", but the dataset has no {kind} condition"),
        };
        c.validate().map_err(|e| anyhow::anyhow!("model: {e}"))?;
        Ok(c)
    }
}
