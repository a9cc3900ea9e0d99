//! `infinity train CONFIG.toml [--set key.path=value …] [--resume auto|PATH]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::train::{self, config::TrainConfig, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML config (see configs/).
    config: PathBuf,
    /// Override a config value, e.g. `--set optim.lr=3e-4` (repeatable; wins over INF__… variables).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// `auto` continues from the newest complete checkpoint of run.dir (if any); or a checkpoint folder.
    #[arg(long)]
    resume: Option<String>,
}

pub fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let cfg = TrainConfig::load(&a.config, &a.set)?;
    let resume = match a.resume.as_deref() {
        None => None,
        Some("auto") => train::latest_checkpoint(&cfg.run.dir),
        Some(p) => Some(PathBuf::from(p)),
    };
    let s = train::train(&cfg, &TrainOptions { resume, stop_after: None })?;
    println!(
        "trained to step {} in {:.1} s: loss {:.4}, bit accuracy {:.2}%, {} skipped steps; last checkpoint {}",
        s.steps,
        s.seconds,
        s.last_loss,
        100.0 * s.last_bit_acc,
        s.skipped_steps,
        s.last_checkpoint.map_or("none".into(), |p| p.display().to_string())
    );
    Ok(ExitCode::SUCCESS)
}
