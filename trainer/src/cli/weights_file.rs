//! `--config` and `--set` of `infinity sample` and `infinity export`: a bare weights file (safetensors,
//! upstream's `.pth`, a folder of files with an index) records no model, so the training config it goes
//! with shapes it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use crate::train::checkpoint::{self, CheckpointModel, ModelSpec};

#[derive(Args, Debug)]
pub struct WeightsFileArgs {
    /// For a bare weights file (safetensors, upstream's .pth, or a folder of files with an index): the
    /// training config it goes with, read as `infinity train` reads it (`extends`, INF__ variables). Its
    /// model.* and its dataset (data.dir, or --data: the bits per token, condition and schedules) shape
    /// the model, and run.precision is the GPU's; nothing else is read.
    #[arg(long, value_name = "TOML")]
    pub config: Option<PathBuf>,
    /// Override a value of --config, as `infinity train --set` does (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl WeightsFileArgs {
    /// Refuse `--set` without `--config` for `path`: a weights file needs the config it changes, and a
    /// checkpoint, run or export folder records its model.
    pub fn check(&self, path: &Path) -> Result<()> {
        if self.config.is_none() && !self.set.is_empty() {
            let sets = self.set.join(" --set ");
            if !path.exists() {
                bail!(
                    "{}: no such file or folder (and --set {sets} changes a --config, which is missing)",
                    path.display()
                );
            }
            if let Some(e) = checkpoint::needs_config(path)? {
                bail!("--set {sets} changes a --config, which is missing: {e}");
            }
            bail!(
                "--set {sets}: --set changes the --config of a bare weights file; a checkpoint, run or export \
                 folder records its model (nothing to set)"
            );
        }
        Ok(())
    }

    /// The model of `path`: a bare weights file shaped by `--config`, else a checkpoint or run folder;
    /// `data` is `--data` (the caller has [`WeightsFileArgs::check`]ed `path` first).
    pub fn load(&self, path: &Path, data: Option<&Path>, ema: bool) -> Result<CheckpointModel> {
        match &self.config {
            Some(config) => {
                let spec = ModelSpec { config, overrides: &self.set, data };
                checkpoint::load_model_file(path, &spec, ema)
            }
            None => match checkpoint::needs_config(path)? {
                Some(e) => Err(e),
                None => checkpoint::load_model(path, ema),
            },
        }
    }
}
