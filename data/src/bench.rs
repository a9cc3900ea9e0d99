//! `infinity data bench`: loader throughput from the page cache, in samples/s and GB/s, for the 256-px
//! and 1024-px upstream schedules, on the caller's thread and with prefetch threads, at two dataset
//! sizes (per-sample cost must not grow with the dataset).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use half::f16;
use rand::Rng;

use crate::error::{DataError, Result};
use crate::format::{self, BIT_ORDER, FORMAT_NAME, FORMAT_VERSION};
use crate::loader::{plan::keyed_rng, Loader, LoaderOptions};
use crate::manifest::{ClassInfo, Conditions, LatentInfo, Manifest, TokenizerInfo};
use crate::schedule::Catalog;
use crate::writer::{DatasetWriter, RowData, WriterOptions};
use crate::{Checksums, Dataset};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub d: usize,
    /// Dataset sizes (rows) for the 256-px schedule; the 1024-px one uses a sixteenth (rows and samples).
    pub rows: Vec<u64>,
    pub global_batch: usize,
    /// Prefetch threads for the second measurement.
    pub workers: usize,
    /// Samples read per measurement at 256 px.
    pub samples: u64,
    /// Run the pyarrow reference (`tools/bench_loader.py`) with this Python on the same datasets.
    pub python: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            d: 32,
            rows: vec![16_384, 131_072],
            global_batch: 64,
            workers: 2,
            samples: 200_000,
            python: None,
        }
    }
}

/// Write `rows` random rows of one schedule (valid bits, f16 latent, class label).
fn make_dataset(dir: &Path, budget: &str, d: usize, rows: u64) -> Result<()> {
    let sched = Catalog::upstream().schedule("1.000", budget)?;
    let header = Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        d: d as u32,
        bit_order: BIT_ORDER.into(),
        tokenizer: TokenizerInfo { name: "random-bench".into(), file: None, params: serde_json::Value::Null },
        conditions: Conditions {
            class: Some(ClassInfo { num_classes: 1000, names: vec![] }),
            text: None,
            caption: false,
        },
        latent: Some(LatentInfo { dtype: "f16".into(), layout: "d,H,W".into() }),
        schedules: vec![sched.clone()],
        shards: vec![],
        total_rows: 0,
        created_by: "infinity data bench".into(),
    };
    let mut w = DatasetWriter::create(dir, header, WriterOptions { overwrite: true, ..Default::default() })?;
    let (h, wd) = sched.latent_hw();
    let mut rng = keyed_rng(1, &[rows]);
    let mut bits = vec![0u8; sched.num_tokens() * d];
    let mut packed = Vec::new();
    for id in 0..rows {
        bits.iter_mut().for_each(|b| *b = rng.random::<bool>() as u8);
        format::pack_bits(&bits, d, &mut packed);
        let latent = (0..d * h * wd).flat_map(|_| f16::from_f32(rng.random_range(-1.0..1.0)).to_le_bytes()).collect();
        w.push(RowData {
            id,
            bucket: 0,
            bits: packed.clone(),
            latent: Some(latent),
            class_label: Some((id % 1000) as i32),
            ..Default::default()
        })?;
    }
    w.finish()?;
    Ok(())
}

/// One measurement over `samples` samples (crossing epochs if the dataset is smaller):
/// `(samples/s, GB/s, ns/sample)`.
fn measure(ds: &Arc<Dataset>, opts: &BenchOptions, samples: u64, workers: usize) -> Result<(f64, f64, f64)> {
    let lo = LoaderOptions { global_batch: opts.global_batch, workers, prefetch: 4, ..Default::default() };
    let mut loader = Loader::new(ds.clone(), lo, None)?;
    // more batches than the workers keep ready (4 each), or the timing reads a full queue
    let batches = (samples / opts.global_batch as u64).max(4 * workers as u64 + 8);
    let _ = loader.next_batch()?; // first batch pays for thread start-up and the epoch plan
    let t = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..batches {
        let b = std::hint::black_box(loader.next_batch()?);
        bytes += b.bits.len() + b.latent.as_ref().map_or(0, Vec::len) + 4 * b.len();
        loader.recycle(b);
    }
    let s = t.elapsed().as_secs_f64();
    let n = (batches * opts.global_batch as u64) as f64;
    Ok((n / s, bytes as f64 / s / 1e9, s / n * 1e9))
}

/// The pyarrow reference on the same dataset: `(samples/s, GB/s)`.
fn measure_pyarrow(python: &str, dir: &Path, global_batch: usize, samples: u64) -> Result<(f64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/bench_loader.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(dir)
        .arg(global_batch.to_string())
        .arg(samples.to_string())
        .output()
        .map_err(|e| DataError::Config(format!("bench: cannot run `{python}`: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<f64>().ok());
    match (out.status.success(), field("samples_per_s="), field("gb_per_s=")) {
        (true, Some(s), Some(g)) => Ok((s, g)),
        _ => Err(DataError::Config(format!(
            "bench: {} failed: {}{}",
            script.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

/// Run every measurement in a scratch folder under `scratch`; returns a Markdown table.
pub fn run(scratch: &Path, opts: &BenchOptions) -> Result<String> {
    let mut out = String::new();
    let _ =
        writeln!(out, "| schedule | L | rows | reader | samples/s | GB/s | ns/sample | open+index ms | vs pyarrow |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for (budget, px, div) in [("0.06M", 256, 1), ("1M", 1024, 16)] {
        for &rows in &opts.rows {
            let rows = (rows / div).max(opts.global_batch as u64 * 2);
            let dir = scratch.join(format!("bench-{px}-{rows}"));
            make_dataset(&dir, budget, opts.d, rows)?;
            // Open once with checksums: that reads every byte, so the measurements run from the page cache.
            let t = Instant::now();
            let ds = Arc::new(Dataset::open(&dir, Checksums::Verify)?);
            let _ = ds.rows_by_bucket();
            let open_ms = t.elapsed().as_secs_f64() * 1e3;
            let l = ds.manifest.schedules[0].num_tokens();
            let reference = match &opts.python {
                Some(py) => Some(measure_pyarrow(py, &dir, opts.global_batch, opts.samples / div)?),
                None => None,
            };
            for workers in [0, opts.workers] {
                let (sps, gbs, ns) = measure(&ds, opts, opts.samples / div, workers)?;
                let threads = if workers == 0 { "1 thread".to_string() } else { format!("1 + {workers} prefetch") };
                let ratio = reference.map_or("–".into(), |(r, _)| format!("{:.1}×", sps / r));
                let _ = writeln!(
                    out,
                    "| 1.000/{budget} ({px} px) | {l} | {rows} | {threads} | {sps:.0} | {gbs:.2} | {ns:.0} | {open_ms:.1} | {ratio} |"
                );
            }
            if let Some((sps, gbs)) = reference {
                let ns = 1e9 / sps;
                let _ = writeln!(out, "| 1.000/{budget} ({px} px) | {l} | {rows} | pyarrow take, 1 thread | {sps:.0} | {gbs:.2} | {ns:.0} | | 1.0× |");
            }
            drop(ds);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(out)
}
