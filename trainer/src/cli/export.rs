//! `infinity export CKPT -o model.safetensors [--dtype bf16] [--block-chunks K] [--data DIR] [--ema]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use infinity_data::Manifest;

use super::weights_file::WeightsFileArgs;
use crate::export::{load_export, read_export, ExportOptions, FreshInit, FromExport};
use crate::model::io::SaveDtype;
use crate::model::Layout;
use crate::train::checkpoint::CheckpointModel;
use crate::train::config::TrainConfig;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint folder, a run folder (its newest complete checkpoint), an export folder (exported
    /// again: another dtype or block chunking), or a bare weights file with --config (upstream's released
    /// .pth: its weights under this framework's checks, with a config.json `infinity sample` reads).
    #[arg(required_unless_present = "init")]
    ckpt: Option<PathBuf>,
    /// Export no trained weights but the ones a run of --config starts from: its model for its dataset
    /// (or --data), initialised as `infinity train` initialises it (`model.init`, μP, `run.seed`). For
    /// testing an inference pipeline at a model's shape (upstream's layer12 to 8b) without training it.
    /// With `model.init_from`, the weights a fine-tune of that config starts from.
    #[arg(long, requires = "config", conflicts_with_all = ["ckpt", "ema"])]
    init: bool,
    /// Output weights (`.safetensors`); `config.json` and the tokenizer are written beside it. Names ending
    /// `.pth`, `.pt`, `.bin` or `.ckpt` are refused (the export is safetensors); any other name is a folder
    /// (made if missing) that gets `model.safetensors` inside it. One export per folder (config.json
    /// describes one weights file), never in a checkpoint, a run or a dataset folder.
    #[arg(short, long, default_value = "model.safetensors")]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// The blocks in K chunks: `block_chunks.C.module.J` keys and `block_chunks = K` in config.json, as
    /// upstream's `Infinity(block_chunks=K)` registers them (1: `blocks.N` keys). Default: the model's.
    #[arg(long, value_name = "K", value_parser = infinity_launcher::positive())]
    block_chunks: Option<usize>,
    /// The training dataset (schedules and tokenizer for config.json), where the checkpoint's `data.dir`
    /// does not lead from here (a weights file's: --config's data.dir, whose bits and condition also
    /// shape the model). It must be the model's (its `d`, layout and condition).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Export the moving average of the weights (`optim.ema_decay`; upstream's training checkpoint:
    /// `trainer.gpt_ema_fsdp`) instead of the weights.
    #[arg(long)]
    ema: bool,
    #[command(flatten)]
    weights: WeightsFileArgs,
}

pub fn run(a: ExportArgs) -> Result<ExitCode> {
    // an export exported again (another dtype or chunking) keeps what it came from and its dataset's
    // description
    let (ck, from_export, ema, init) = match (&a.ckpt, &a.weights.config) {
        (None, Some(config)) => {
            let (ck, init) = fresh_model(config, &a.weights.set, a.data.as_deref())?;
            (ck, None, false, Some(init))
        }
        (None, None) => bail!("give the checkpoint, run, export or weights file to export (or --init with --config)"),
        (Some(ckpt), config) => {
            a.weights.check(ckpt)?;
            match (read_export(ckpt), config) {
                (Some(_), None) => {
                    let e = load_export(ckpt, a.ema)?;
                    console!("{}: an export of {}", ckpt.display(), e.source);
                    let from =
                        FromExport { dir: ckpt.clone(), dtype: e.dtype, source: e.source_record, dataset: e.dataset };
                    (e.model, Some(from), e.ema, None)
                }
                _ => (a.weights.load(ckpt, a.data.as_deref(), a.ema)?, None, a.ema, None),
            }
        }
    };
    let dtype = match a.dtype {
        DtypeArg::F32 => SaveDtype::F32,
        DtypeArg::Bf16 => SaveDtype::Bf16,
    };
    let depth = ck.model.depth;
    let block_chunks = a.block_chunks.unwrap_or(ck.model.block_chunks);
    ensure!(
        depth.is_multiple_of(block_chunks),
        "--block-chunks {block_chunks}: must divide the model's depth {depth} (one of {:?})",
        crate::export::divisors(depth)
    );
    // a pickle is what upstream's `--checkpoint_type torch` loads; this writes safetensors only
    let ext = a.out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    ensure!(ext != "safetensor", "-o {}: did you mean `.safetensors`? (any other name is a folder)", a.out.display());
    ensure!(
        !matches!(ext.as_str(), "pth" | "pt" | "bin" | "ckpt"),
        "-o {}: the export is safetensors. Upstream's run_infinity.py loads the export folder with \
         `--checkpoint_type torch_shard` (its model.safetensors.index.json is written beside the weights), or a \
         .pth made from it: python -c \"import torch, safetensors.torch as st; torch.save(st.load_file('DIR/model.safetensors'), 'model.pth')\"",
        a.out.display()
    );
    // (`-o exp5` once wrote a file named exp5, its config.json and tokenizer into the working folder)
    let weights_file = a.out.extension().is_some_and(|e| e == "safetensors");
    let folder = a.out.is_dir() || a.out.as_os_str().to_string_lossy().ends_with('/') || !weights_file;
    let out = if folder { a.out.join("model.safetensors") } else { a.out.clone() };
    let opts = ExportOptions { dtype, block_chunks, data: a.data.clone(), ema, from_export, init };
    let done = crate::export::export(&ck, &out, &opts)?;
    for w in &done.warnings {
        console_err!("warning: {w}");
    }
    let size = std::fs::metadata(&done.weights).map(|m| m.len()).unwrap_or(0);
    console!(
        "exported {}{}: {} ({:.1} MB, block_chunks {block_chunks}) and {}",
        match &opts.init {
            Some(FreshInit { config, seed, init_from: None }) => {
                format!("the initial weights of {} (run.seed {seed})", config.display())
            }
            Some(FreshInit { config, init_from: Some(_), .. }) => {
                format!("the weights a run of {} starts from", config.display())
            }
            None => ck.described(),
        },
        if ema { " (its moving average)" } else { "" },
        done.weights.display(),
        size as f64 / 1e6,
        done.config.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--init`: the model of `config` (with `sets`) for its dataset (or `data`), with the weights a run of
/// it starts from (`model.init_from`'s over its seed's), and where they came from.
fn fresh_model(config: &Path, sets: &[String], data: Option<&Path>) -> Result<(CheckpointModel, FreshInit)> {
    let cfg = TrainConfig::load(config, sets).with_context(|| format!("--config {}", config.display()))?;
    let data_dir = data.map_or_else(|| cfg.data.dir.clone(), Path::to_path_buf);
    let m = Manifest::load(&data_dir).with_context(|| {
        format!("the dataset {} (its bits, condition and schedules shape the model; pass --data)", data_dir.display())
    })?;
    let model = cfg.model.model_for(&m).with_context(|| format!("--config {}", config.display()))?;
    crate::train::check_schedules_fit(&model, &m).with_context(|| format!("the dataset {}", data_dir.display()))?;
    let lay = Layout::new(&model);
    console!("initialising {} parameters (run.seed {})", lay.numel, cfg.run.seed);
    let mut params = crate::train::fresh_weights(&cfg, &model, &lay);
    // (a fine-tune's config: the weights its run starts from, model.init_from's over the fresh ones)
    let started = crate::train::init_from::init_from(&cfg, (&model, &lay), &mut params, (&data_dir, &m))?;
    if let Some(s) = &started {
        s.say(true);
    }
    let init = FreshInit { config: config.to_path_buf(), seed: cfg.run.seed, init_from: started.map(|s| s.record) };
    let (dir, precision) = (config.to_path_buf(), cfg.run.precision);
    let ck = CheckpointModel { dir, model, data_dir, params, step: None, precision, ema_decay: None, tokenizer: None };
    Ok((ck, init))
}
