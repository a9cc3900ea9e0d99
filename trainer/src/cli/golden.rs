//! `infinity golden check DIR…`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::golden;

#[derive(Subcommand, Debug)]
pub enum GoldenCommand {
    /// Run each golden folder (or every golden folder inside a given folder) and print max abs /
    /// relative error per tensor; exits 1 beyond tolerance.
    Check {
        /// Golden folders (tests/golden/*: tensors and a manifest, docs/golden-format.md), or folders holding them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print every tensor, not only the worst ten of each folder.
        #[arg(long)]
        all: bool,
        /// Run the model on `cpu` or `cuda` (GPU 0; needs a build with the `cuda` feature).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        device: String,
    },
}

pub fn run(cmd: GoldenCommand) -> anyhow::Result<ExitCode> {
    let GoldenCommand::Check { paths, all, device } = cmd;
    anyhow::ensure!(
        device == "cpu" || cfg!(feature = "cuda"),
        "--device cuda needs a build with the `cuda` feature (cargo build --release --features cuda)"
    );
    let mut dirs = Vec::new();
    for p in paths {
        if p.join("config.json").is_file() {
            dirs.push(p);
        } else if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(&p)?
                .flatten()
                .map(|e| e.path())
                .filter(|d| d.join("config.json").is_file())
                .collect();
            anyhow::ensure!(
                !inner.is_empty(),
                "{}: no golden folders (folders with a config.json) inside",
                p.display()
            );
            inner.sort();
            dirs.extend(inner);
        } else if !p.exists() {
            anyhow::bail!("{}: does not exist", p.display());
        } else {
            anyhow::bail!("{}: not a golden folder (expected a folder with config.json)", p.display());
        }
    }
    let mut failed = 0;
    for dir in &dirs {
        // a folder that cannot be checked (missing or malformed files) fails alone: the others are checked
        let r = match golden::check_on(dir, device == "cuda") {
            Ok(r) => r,
            Err(e) => {
                console!("{}: FAIL: {e:#}", dir.display());
                failed += 1;
                continue;
            }
        };
        let mut rows = r.comparisons.clone();
        rows.sort_by(|a, b| (b.rel / b.tol).total_cmp(&(a.rel / a.tol)));
        console!("{} ({}): {} tensors", dir.display(), r.mode, rows.len());
        console!("  {:<48} {:>11} {:>11} {:>9}", "tensor", "max abs", "rel", "tol");
        for c in rows.iter().take(if all { usize::MAX } else { 10 }) {
            let flag = if c.ok() { "" } else { "  FAIL" };
            console!("  {:<48} {:>11.3e} {:>11.3e} {:>9.0e}{flag}", c.name, c.max_abs, c.rel, c.tol);
        }
        for n in r.notes.iter().take(20) {
            console!("  note: {n}");
        }
        for f in &r.failures {
            console!("  FAIL: {f}");
        }
        if !r.ok() {
            failed += 1;
        }
    }
    console!("{} golden folders, {} failed", dirs.len(), failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
