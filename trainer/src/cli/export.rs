//! `infinity export CKPT -o model.safetensors [--dtype bf16] [--chunked]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::model::io::SaveDtype;
use crate::train::checkpoint;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint folder, or a run folder (its newest complete checkpoint).
    ckpt: PathBuf,
    /// Output weights; `config.json` is written beside it. A folder (existing, or ending in `/`) gets
    /// `model.safetensors` inside it.
    #[arg(short, long, default_value = "model.safetensors")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// `block_chunks.C.module.J` keys, as upstream's loader expects for models built with block_chunks > 1.
    #[arg(long)]
    chunked: bool,
    /// Export the moving average of the weights (`optim.ema_decay`) instead of the weights.
    #[arg(long)]
    ema: bool,
}

pub fn run(a: ExportArgs) -> Result<ExitCode> {
    let ck = checkpoint::load_model(&a.ckpt, a.ema)?;
    let dtype = match a.dtype {
        DtypeArg::F32 => SaveDtype::F32,
        DtypeArg::Bf16 => SaveDtype::Bf16,
    };
    if a.chunked && ck.model.block_chunks <= 1 {
        console_err!("--chunked: this model has block_chunks = 1, so its keys stay blocks.N (as upstream names them)");
    }
    let folder = a.out.is_dir() || a.out.as_os_str().to_string_lossy().ends_with('/');
    let out = if folder { a.out.join("model.safetensors") } else { a.out.clone() };
    let (weights, config) = crate::export::export(&ck, &out, dtype, a.chunked)?;
    let size = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
    console!(
        "exported {}{} (step {}): {} ({:.1} MB) and {}",
        ck.dir.display(),
        if a.ema { "'s moving average" } else { "" },
        ck.step,
        weights.display(),
        size as f64 / 1e6,
        config.display()
    );
    Ok(ExitCode::SUCCESS)
}
