//! `infinity data …`: synth, pack, inspect, verify, stats, bench.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use infinity_data::{bench, inspect, pack, synth, writer::WriterOptions, Checksums, Dataset};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Generate the procedural shapes dataset (class + caption conditions) and tokenize it.
    Synth(SynthArgs),
    /// Tokenize a folder of PNG/JPEG images (classes from sub-folder names, else one class) into shards.
    Pack(PackArgs),
    /// Print the manifest, schedules, shards and Arrow schema (exit 1 where the first shard's schema
    /// is not one the reader takes).
    Inspect { dir: PathBuf },
    /// Check every shard and row; exits non-zero on any problem.
    Verify { dir: PathBuf },
    /// Per-scale bit statistics, the class histogram and the captions' tokens; optionally a PNG of decoded samples.
    Stats(StatsArgs),
    /// Loader throughput (samples/s, GB/s) at the 256-px and 1024-px schedules.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct Common {
    /// Output dataset folder.
    #[arg(long)]
    out: PathBuf,
    /// Bits per token (latent channels), at most 3·patch² [default: 16, or --tokenizer's].
    #[arg(long, value_parser = super::positive())]
    d: Option<usize>,
    /// Pixel budget: demo4, demo5, 0.06M, 0.25M, 0.60M or 1M.
    #[arg(long, default_value = "demo5")]
    budget: String,
    /// Tokenizer patch side in pixels [default: 4, or --tokenizer's].
    #[arg(long, value_parser = super::positive())]
    patch: Option<usize>,
    /// Store latents and bits at twice each scale's sides, the transformer's tokens being their 2×2
    /// patches (upstream's apply_spatial_patchify, its 8B model): for model.apply_spatial_patchify.
    #[arg(long)]
    spatial_patchify: bool,
    /// Target shard size in MiB (at least 1).
    #[arg(long, default_value_t = 256, value_parser = super::positive_of::<u64>())]
    shard_mib: u64,
    /// Replace a dataset already in --out.
    #[arg(long)]
    overwrite: bool,
}

impl Common {
    /// `--d` and `--patch`, each by default the reused tokenizer's (where one is given), else 16 and 4.
    fn d_and_patch(&self, tokenizer: Option<&std::path::Path>) -> anyhow::Result<(usize, usize)> {
        let reused = tokenizer.map(infinity_data::tokenizer::PatchTokenizer::load).transpose()?;
        let (d, patch) = reused.map_or((16, 4), |t| (t.d, t.patch));
        Ok((self.d.unwrap_or(d), self.patch.unwrap_or(patch)))
    }

    fn writer(&self) -> WriterOptions {
        WriterOptions { shard_bytes: self.shard_mib << 20, overwrite: self.overwrite, ..Default::default() }
    }
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    #[command(flatten)]
    common: Common,
    /// Rows (images) to generate.
    #[arg(long, default_value_t = 4096, value_parser = super::positive_of::<u64>())]
    rows: u64,
    /// Seed of the images and captions: the same seed gives the same files, byte for byte.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Aspect-ratio templates with their share of rows, as TEMPLATE:WEIGHT,...
    #[arg(long, default_value = "1.000:0.75,0.666:0.25")]
    templates: String,
    /// Text embedding width.
    #[arg(long, default_value_t = 32, value_parser = super::positive())]
    text_width: usize,
    /// Rows the tokenizer is fitted on (with --tokenizer: its PSNR is measured on).
    #[arg(long, default_value_t = 512, value_parser = super::positive())]
    fit_rows: usize,
    /// Reuse a tokenizer (e.g. the training dataset's tokenizer.safetensors, for a validation split).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "meta"])))]
pub struct PackArgs {
    #[command(flatten)]
    common: Common,
    /// Folder of .png/.jpg/.jpeg images, one sub-folder per class (class ids: the sorted folder names;
    /// hidden folders are not classes, hidden files are left out), or the images directly in it: one
    /// class named after the folder (with classifier-free guidance's null class, unconditional
    /// generation). Not both (beside the images, folders without images are left out). `NAME.txt`
    /// (or `NAME.TXT`) beside `NAME.png` is its caption: UTF-8, or UTF-16 with a byte-order mark.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Instead of --images: a folder of upstream's metadata files, `<h_div_w_template>_<count>.jsonl`
    /// with `image_path` and `long_caption` on each line (docs/data-format.md). Its images are one
    /// class named after the folder, each resized to its file's template; `long_caption` is the caption.
    #[arg(long)]
    meta: Option<PathBuf>,
    /// Reuse a tokenizer (tokenizer.safetensors) instead of fitting one.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Images the tokenizer is fitted on, spread evenly over the folder (every class); its PSNR is
    /// measured on up to 64 others, where there are more images.
    #[arg(long, default_value_t = 512, value_parser = super::positive())]
    fit_images: usize,
    /// Leave out images that cannot be read or decoded, listing them, instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Take the classes (names and ids) of this dataset: every class folder must be one of its classes,
    /// and a class without a folder has no rows. For a top-up of some classes that mixes with it
    /// (`[[data.mix]]`; with --tokenizer DATASET/tokenizer.safetensors).
    #[arg(long, value_name = "DATASET", conflicts_with = "meta")]
    classes_of: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    dir: PathBuf,
    /// Rows per bucket to measure, spread over it (and over the dataset, for the class histogram).
    #[arg(long, default_value_t = 10_000, value_parser = super::positive_of::<u64>())]
    rows: u64,
    /// Write a grid of decoded samples to this PNG.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Samples in the PNG grid, spread over the dataset (a packed dataset's rows are in class order).
    #[arg(long, default_value_t = 32, value_parser = super::positive_of::<usize>())]
    n: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Dataset sizes (rows at 256 px; 1024 px uses a sixteenth, at least two global batches).
    #[arg(long, value_delimiter = ',', default_value = "16384,131072", value_parser = super::positive_of::<u64>())]
    rows: Vec<u64>,
    #[arg(long, default_value_t = 32, value_parser = super::positive())]
    d: usize,
    #[arg(long, default_value_t = 64, value_parser = super::positive())]
    global_batch: usize,
    /// Prefetch threads for the second measurement.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Samples read per measurement (at least enough batches that the read-ahead queue cannot serve them).
    #[arg(long, default_value_t = 200_000)]
    samples: u64,
    /// Where to generate the datasets: a fresh folder is made inside it and removed afterwards, nothing
    /// else in it is touched (default: the system temp folder).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Also run the pyarrow reference (tools/bench_loader.py) with this Python, side by side.
    #[arg(long)]
    python: Option<String>,
}

fn parse_templates(s: &str) -> anyhow::Result<Vec<(String, f64)>> {
    s.split(',')
        .map(|part| {
            let (t, w) =
                part.split_once(':').with_context(|| format!("--templates: `{part}` is not TEMPLATE:WEIGHT"))?;
            let w: f64 = w.parse().with_context(|| format!("--templates: weight `{w}` is not a number"))?;
            if !w.is_finite() || w <= 0.0 {
                bail!("--templates: weight of `{t}` must be positive");
            }
            Ok((t.trim().to_string(), w))
        })
        .collect()
}

/// The command line, for the manifest's `created_by` (an argument not in UTF-8, a path, shown lossily:
/// `args()` would panic on it).
fn command_line() -> String {
    std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

pub fn run(cmd: DataCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DataCommand::Synth(a) => {
            let (d, patch) = a.common.d_and_patch(a.tokenizer.as_deref())?;
            let opts = synth::SynthOptions {
                rows: a.rows,
                seed: a.seed,
                d,
                budget: a.common.budget.clone(),
                patch,
                spatial_patchify: a.common.spatial_patchify,
                templates: parse_templates(&a.templates)?,
                text_width: a.text_width,
                fit_rows: a.fit_rows,
                tokenizer: a.tokenizer.clone(),
                writer: a.common.writer(),
                created_by: command_line(),
            };
            let t = Instant::now();
            let (m, fit) = synth::synth(&a.common.out, &opts)?;
            console!(
                "wrote {} rows in {} to {} in {:.1} s",
                m.total_rows,
                super::plural(m.shards.len(), "shard"),
                a.common.out.display(),
                t.elapsed().as_secs_f64()
            );
            let (how, measured_on) = match &a.tokenizer {
                Some(p) => (format!("reused {}", p.display()), super::plural(fit.images, "image")),
                None => ("fitted".into(), fit.measured_on()),
            };
            console!(
                "tokenizer: {how}; PSNR {:.2} dB continuous latent, {:.2} dB after multi-scale BSQ (measured on {measured_on})",
                fit.psnr_latent_db,
                fit.psnr_bsq_db,
            );
            console_text!("{}", inspect::inspect(&a.common.out)?.summary);
        }
        DataCommand::Pack(mut a) => {
            // (a top-up mixes with its dataset only on that dataset's tokenizer: taken where none is given)
            if let Some(dir) = a.classes_of.as_ref().filter(|_| a.tokenizer.is_none()) {
                let kept = dir.join(infinity_data::tokenizer::TOKENIZER_FILE);
                if kept.is_file() {
                    console!("--classes-of {}: its tokenizer too ({})", dir.display(), kept.display());
                    a.tokenizer = Some(kept);
                }
            }
            let (d, patch) = a.common.d_and_patch(a.tokenizer.as_deref())?;
            let classes = match &a.classes_of {
                Some(dir) => {
                    let m = infinity_data::Manifest::load(dir)
                        .with_context(|| format!("--classes-of {}", dir.display()))?;
                    // (a top-up mixes only on its dataset's schedules: said now, not when a run refuses the mix)
                    if let Some(w) = pack::top_up_mismatch(&m, &a.common.budget, a.common.spatial_patchify) {
                        console_err!("warning: --classes-of {}: {w}", dir.display());
                    }
                    match m.conditions.class {
                        Some(c) if c.names.len() == c.num_classes as usize => Some(c.names),
                        Some(_) => {
                            bail!("--classes-of {}: its classes have no names to match folders to", dir.display())
                        }
                        None => bail!("--classes-of {}: a dataset without a class condition", dir.display()),
                    }
                }
                None => None,
            };
            let opts = pack::PackOptions {
                d,
                budget: a.common.budget.clone(),
                patch,
                spatial_patchify: a.common.spatial_patchify,
                tokenizer: a.tokenizer,
                fit_images: a.fit_images,
                skip_bad: a.skip_bad,
                classes,
                writer: a.common.writer(),
                created_by: command_line(),
            };
            let (source, (m, fit, notes)) = match (&a.images, &a.meta) {
                (Some(images), _) => (images, pack::pack(images, &a.common.out, &opts)?),
                (None, Some(meta)) => (meta, pack::pack_meta(meta, &a.common.out, &opts)?),
                (None, None) => unreachable!("clap requires --images or --meta"),
            };
            let packed = infinity_launcher::plural(m.total_rows as usize, "image");
            console!("packed {packed} into {}", a.common.out.display());
            match (&notes.single_class, &a.meta) {
                (Some(name), None) => console!(
                    "no class sub-folders in {}: every image is one class, `{name}` (with classifier-free \
                     guidance's null class: unconditional generation)",
                    source.display()
                ),
                (Some(name), Some(_)) => console!(
                    "every image is one class, `{name}` (unconditional generation): the captions are stored, but a \
                     class model does not read them; tools/write_shards.py upstream --meta encodes them with T5 \
                     for a text model"
                ),
                (None, _) => {}
            }
            // (the first five, and how many more)
            let first_few = |paths: &[PathBuf]| {
                let shown: Vec<String> = paths.iter().take(5).map(|p| p.display().to_string()).collect();
                match paths.len().saturating_sub(5) {
                    0 => shown.join(", "),
                    more => format!("{} and {more} more", shown.join(", ")),
                }
            };
            if !notes.skipped.is_empty() {
                let what = match a.meta {
                    Some(_) => "not .jsonl",
                    None => {
                        "not .png/.jpg/.jpeg, hidden, a folder below a class folder or one without images, or a \
                         link back to the folder"
                    }
                };
                console!(
                    "left out {} ({what}): {}",
                    infinity_launcher::plural(notes.skipped.len(), "file"),
                    first_few(&notes.skipped)
                );
            }
            if !notes.nested.is_empty() {
                let images: usize = notes.nested.iter().map(|(_, n)| n).sum();
                let folders: Vec<PathBuf> = notes.nested.iter().map(|(f, _)| f.clone()).collect();
                console!(
                    "left out {} in {} below class folders (a class is a folder right below --images; move them up \
                     into their class folder, or make them classes of their own): {}",
                    infinity_launcher::plural(images, "image"),
                    infinity_launcher::plural(folders.len(), "folder"),
                    first_few(&folders)
                );
            }
            if !notes.datasets.is_empty() {
                console!(
                    "left out {} holding a dataset (manifest.json), not a class (images in them are not packed): {}",
                    infinity_launcher::plural(notes.datasets.len(), "folder"),
                    first_few(&notes.datasets)
                );
            }
            if !notes.orphan_captions.is_empty() {
                console!(
                    "not read: {} beside no image of their name (NAME.txt, or NAME.TXT, is the caption of NAME.png, \
                     NAME.jpg or NAME.jpeg, the NAME's case and all): {}",
                    infinity_launcher::plural(notes.orphan_captions.len(), "caption file"),
                    first_few(&notes.orphan_captions)
                );
            }
            if !notes.extra_captions.is_empty() {
                console!(
                    "not read: {} beside an image whose caption was read from another (one caption per image: NAME.txt, \
                     else NAME.TXT): {}",
                    infinity_launcher::plural(notes.extra_captions.len(), "second caption file"),
                    first_few(&notes.extra_captions)
                );
            }
            if notes.short_captions > 0 {
                console!(
                    "short captions (NAME.short.txt, a metadata file's `text`) not stored, which text datasets \
                     alone read (tools/write_shards.py): {} of {} rows have one",
                    notes.short_captions,
                    m.total_rows
                );
            }
            if !notes.bad.is_empty() {
                console!(
                    "left out {} that could not be read (--skip-bad):",
                    infinity_launcher::plural(notes.bad.len(), "image")
                );
                for b in &notes.bad {
                    console!("  {b}");
                }
            }
            for (class, n) in &notes.emptied_classes {
                console!(
                    "warning: class `{class}` has no image left: --skip-bad left out {}, so the dataset has a class \
                     no sample has (mend or remove its folder, and pack again)",
                    match n {
                        1 => "its one image".to_string(),
                        n => format!("all {n} of its images"),
                    }
                );
            }
            if notes.uncaptioned > 0 {
                let missing =
                    if a.meta.is_some() { "an empty long_caption" } else { "no caption (NAME.txt beside NAME.png)" };
                console!("{} of {} images have {missing}", notes.uncaptioned, m.total_rows);
            }
            match (fit, &opts.tokenizer) {
                (Some(f), _) => console!(
                    "tokenizer: fitted; PSNR {:.2} dB continuous latent, {:.2} dB after multi-scale BSQ (measured \
                     on {})",
                    f.psnr_latent_db,
                    f.psnr_bsq_db,
                    f.measured_on()
                ),
                (None, Some(p)) => console!("tokenizer: reused {}", p.display()),
                (None, None) => {}
            }
        }
        DataCommand::Inspect { dir } => {
            let found = inspect::inspect(&dir)?;
            console_text!("{}", found.summary);
            // (a summary of a dataset no run can read exits as a failed check would)
            if let Some(problem) = found.schema_problem {
                console_err!("error: {problem}; `infinity data verify {}` checks every shard", dir.display());
                return Ok(ExitCode::FAILURE);
            }
        }
        DataCommand::Verify { dir } => {
            let r = inspect::verify(&dir);
            for p in &r.problems {
                console!("problem: {p}");
            }
            for n in &r.notes {
                console!("note: {n}");
            }
            console!(
                "{}: {} opened, {} checked, {} ({} listed)",
                dir.display(),
                super::plural(r.shards, "shard"),
                super::plural(r.rows_checked as usize, "row"),
                super::plural(r.count(), "problem"),
                r.problems.len()
            );
            if !r.problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        DataCommand::Stats(a) => {
            if let Some(png) = &a.png {
                inspect::grid_format(png)?;
                // (its folder made, as infinity sample makes its -o's: before the statistics take their time)
                if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
            }
            let ds = Dataset::open(&a.dir, Checksums::Verify)?;
            console_text!("{}", inspect::stats(&ds, a.rows)?);
            if let Some(png) = a.png {
                inspect::sample_grid(&ds, a.n, &png)?;
                console!("wrote {} decoded samples to {}", a.n.min(ds.num_rows() as usize), png.display());
            }
        }
        DataCommand::Bench(a) => {
            // a folder of our own inside the one given: the user's folder (say `.`) is never removed
            let parent = a.scratch.clone().unwrap_or_else(std::env::temp_dir);
            let named = if a.scratch.is_some() { "--scratch " } else { "the temp folder " };
            let scratch = tempfile::Builder::new()
                .prefix("infinity-bench-")
                .tempdir_in(&parent)
                .with_context(|| format!("{named}{}: cannot make a folder in it", parent.display()))?;
            let opts = bench::BenchOptions {
                d: a.d,
                rows: a.rows,
                global_batch: a.global_batch,
                workers: a.workers,
                samples: a.samples,
                python: a.python,
            };
            let table = bench::run(scratch.path(), &opts);
            drop(scratch); // (removes the generated datasets)
            console!("loader throughput, d = {}, global batch {}, from the page cache:", a.d, a.global_batch);
            console_text!("{}", table?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
