//! `infinity model info | bench | coord-check`: sizes, FLOPs and GPU memory of a model preset, its
//! training throughput on the CPU or a GPU, and μP's coordinate check.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use infinity_data::Catalog;

use crate::model::bench::{self, train_flops_per_token, BenchOptions};
use crate::model::coord_check::{self, CoordOptions};
use crate::model::{Conditioning, Layout, ModelConfig};

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Parameter count, training FLOPs per token and GPU memory of a preset at a schedule.
    Info(InfoArgs),
    /// Forward+backward tokens/s and peak memory on the CPU or a GPU (`--device`), optionally beside
    /// PyTorch.
    Bench(BenchArgs),
    /// μP's coordinate check: activation sizes over a few AdamW steps at several widths, in the
    /// standard parametrization and then in μP (`model.mup_base_width`).
    CoordCheck(CoordArgs),
}

#[derive(Args, Debug)]
pub struct CoordArgs {
    /// The model whose width varies (class-conditioned, 16 classes, unless --text).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Text conditioning (random text features): checks the cross-attention and the text pool too.
    #[arg(long)]
    text: bool,
    /// Widths to compare.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
    widths: Vec<usize>,
    /// Heads at every width (and in μP's base model); default: the preset's head dimension kept.
    #[arg(long)]
    heads: Option<usize>,
    /// μP's base width (default: the first width).
    #[arg(long)]
    base_width: Option<usize>,
    /// AdamW steps (weight decay 0).
    #[arg(long, default_value_t = 5, value_parser = super::positive())]
    steps: usize,
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    #[arg(long, default_value_t = 4, value_parser = super::positive())]
    batch: usize,
    /// Scale schedule (pixel budget at template 1.000).
    #[arg(long, default_value = "demo5")]
    budget: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
pub struct Shape {
    /// tiny, small, layer12 … layer48, 2b, 8b, 20b.
    #[arg(long, default_value = "layer12")]
    preset: String,
    /// Override the width for width-reduced variants: heads = width / the preset's head dim (rounded
    /// down, at least 1), so the head dim stays the preset's where the width is a multiple of it.
    #[arg(long)]
    width: Option<usize>,
    /// Override the depth (blocks), as `model.depth` does in a run.
    #[arg(long, value_parser = super::positive())]
    depth: Option<usize>,
    /// Override the heads (after --width), as `model.num_heads` does in a run.
    #[arg(long, value_parser = super::positive())]
    heads: Option<usize>,
    /// Aspect-ratio template of the schedule counted (with `--budget`; default 1.000, or with `model info
    /// --dataset` and neither given, the dataset's schedule that `infinity sample` takes).
    #[arg(long)]
    template: Option<String>,
    /// Pixel budget of the schedule counted (default 0.06M, 256 px; see --template).
    #[arg(long)]
    budget: Option<String>,
    /// Text tokens per sample of a text-conditioned model (default: `model info` with --dataset or
    /// --text-maxlen, the longest caption, as a run counts; else 32, at most the preset's longest).
    #[arg(long, value_parser = super::positive())]
    text_tokens: Option<usize>,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    shape: Shape,
    /// Samples per micro-batch, for the GPU memory table.
    #[arg(long, default_value_t = 1, value_parser = super::positive())]
    batch: usize,
    /// Data-parallel ranks: above 1, AdamW's state is ZeRO-1 sharded over them (dist.zero1 over NCCL),
    /// and with bf16 matmuls the f32 weights too.
    #[arg(long, default_value_t = 1, value_parser = super::positive())]
    world: usize,
    /// Memory of the GPU (GiB): adds the largest micro-batch that fits to the table (H100: 80, H200: 141).
    #[arg(long)]
    gpu_gib: Option<f64>,
    /// A class-conditioned model of N classes (VAR-style, as `model.conditioning = "class"` trains on
    /// such a dataset) instead of upstream's text conditioning.
    #[arg(long, value_name = "N", value_parser = super::positive())]
    classes: Option<usize>,
    /// Bits per token (a run takes the dataset's); default the preset's.
    #[arg(long, value_parser = super::positive())]
    d: Option<usize>,
    /// Text feature width (a run takes its dataset's `text_emb` width); default the preset's.
    #[arg(long, value_parser = super::positive())]
    text_dim: Option<usize>,
    /// Rows of `cfg_uncond`, the longest caption in tokens (a run takes its dataset's); default the
    /// preset's.
    #[arg(long, value_parser = super::positive())]
    text_maxlen: Option<usize>,
    /// Take the bits per token and the condition from this dataset, as a run on it does: its text
    /// width and longest caption (or, for a dataset without text or with --classes, its classes).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["d", "text_dim", "text_maxlen"])]
    dataset: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    shape: Shape,
    #[arg(long, default_value_t = 2, value_parser = super::positive())]
    batch: usize,
    #[arg(long, default_value_t = 3, value_parser = super::positive())]
    steps: usize,
    /// Also run the PyTorch reference (tests/reference/bench_model.py) with this Python.
    #[arg(long)]
    python: Option<String>,
    /// `cpu`, or `cuda` (GPU 0; needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// Peak dense TFLOP/s of the device, for MFU (H200: about 790 in bf16).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// On the GPU, recompute each block in the backward (run.recompute).
    #[arg(long)]
    recompute: bool,
    /// On the GPU, bf16 matmul inputs with f32 accumulation (run.precision = "bf16").
    #[arg(long)]
    bf16: bool,
    /// On the GPU, after the timed steps, one more step with the GPU time of every kernel recorded:
    /// prints where the step's time goes.
    #[arg(long)]
    profile: bool,
}

fn config(s: &Shape) -> anyhow::Result<(ModelConfig, String)> {
    let mut c = ModelConfig::named_preset(&s.preset).context("--preset")?;
    let mut label = s.preset.clone();
    if let Some(w) = s.width {
        c = c.with_width(w);
        label = format!("{}-w{w}", s.preset);
    }
    if let Some(depth) = s.depth {
        c = c.with_depth(depth);
        label = format!("{label}-d{depth}");
    }
    if let Some(heads) = s.heads {
        c.num_heads = heads;
        label = format!("{label}-h{heads}");
    }
    c.validate().map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    Ok((c, label))
}

impl Shape {
    const TEMPLATE: &str = "1.000";
    const BUDGET: &str = "0.06M";

    /// The catalog's schedule of --template and --budget (their defaults where not given).
    fn catalog_schedule(&self) -> anyhow::Result<infinity_data::schedule::ScaleSchedule> {
        let template = self.template.as_deref().unwrap_or(Self::TEMPLATE);
        Ok(Catalog::upstream().schedule(template, self.budget.as_deref().unwrap_or(Self::BUDGET))?)
    }
}

/// `model info`'s model: the shape's, with its bits per token and condition as a run's dataset sets
/// them: `--dataset`'s, else `--classes`, `--d`, `--text-dim` and `--text-maxlen`. And what else
/// `--dataset` says: its classes (beside the text the model was counted with, a class model is another
/// count) and its schedules' names.
fn info_config(a: &InfoArgs) -> anyhow::Result<(ModelConfig, String, DatasetSays)> {
    // (far beyond any GPU's micro-batch or job's ranks: the memory table's products stay in range)
    const MOST: usize = 1 << 20;
    anyhow::ensure!(a.batch <= MOST && a.world <= MOST, "--batch and --world: at most {MOST} each");
    if let Some(g) = a.gpu_gib.filter(|g| !(g.is_finite() && *g > 0.0)) {
        anyhow::bail!("--gpu-gib {g}: expected a size in GiB");
    }
    let (mut c, label) = config(&a.shape)?;
    let (mut d, mut classes, mut text) = (a.d, a.classes, (a.text_dim, a.text_maxlen));
    let (mut dataset_classes, mut schedules, mut default_schedule) = (None, Vec::new(), None);
    if let Some(dir) = &a.dataset {
        let m = infinity_data::Manifest::load(dir).with_context(|| format!("--dataset {}", dir.display()))?;
        dataset_classes = m.conditions.class.as_ref().map(|k| k.num_classes as usize);
        schedules = m.schedules.iter().map(|s| s.name.clone()).collect();
        if !m.schedules.is_empty() {
            let rows = crate::infer::rows_by_schedule(&m);
            default_schedule =
                Some(crate::infer::pick_schedule(&m, &rows, crate::infer::SchedulePick::Default)?.clone());
        }
        // (a dataset stored at twice the sides trains a model of 2×2 patches: the model a run could train
        // on it, which a run of another preset takes with `model.apply_spatial_patchify = true`)
        let stored_patchified = m.schedules.iter().any(|s| s.spatial_patchify);
        if stored_patchified != c.apply_spatial_patchify {
            c.apply_spatial_patchify = stored_patchified;
            let stored = if stored_patchified { "for spatial patchify" } else { "at the transformer's sides" };
            console!(
                "(the dataset is stored {stored}: counted with model.apply_spatial_patchify = {stored_patchified}, \
                 which a run of preset {} on it needs)",
                a.shape.preset
            );
        }
        d = Some(c.token_bits(m.d as usize));
        match (&m.conditions.text, a.classes) {
            (Some(t), None) => text = (Some(t.width as usize), Some(t.max_tokens as usize)),
            (_, Some(n)) if dataset_classes != Some(n) => {
                bail!("--classes {n}: the dataset {} has {}", dir.display(), describe_classes(dataset_classes))
            }
            (None, None) => match dataset_classes {
                Some(n) => classes = Some(n),
                None => bail!("--dataset {}: the dataset has no condition (class or text)", dir.display()),
            },
            (_, Some(_)) => {}
        }
    }
    if classes.is_some() && (text.0.is_some() || text.1.is_some()) {
        bail!("--text-dim and --text-maxlen describe a text-conditioned model, --classes a class-conditioned one");
    }
    if let Some(n) = classes {
        c.conditioning = Conditioning::Class { num_classes: n };
    }
    c.d = d.unwrap_or(c.d);
    c.text_channels = text.0.unwrap_or(c.text_channels);
    c.text_maxlen = text.1.unwrap_or(c.text_maxlen);
    c.validate().map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    Ok((c, label, DatasetSays { classes: dataset_classes, schedules, default_schedule }))
}

/// What `model info --dataset` reads beside the model: the dataset's classes and schedules' names.
#[derive(Debug, Default)]
struct DatasetSays {
    classes: Option<usize>,
    schedules: Vec<String>,
    /// The schedule `infinity sample` takes by default: what `model info` counts without --template
    /// and --budget.
    default_schedule: Option<infinity_data::schedule::ScaleSchedule>,
}

/// Text tokens per sample of `model bench` without --text-tokens.
const BENCH_TEXT_TOKENS: usize = 32;

/// The text tokens per sample `model info` counts: --text-tokens; else, where the longest caption is
/// known (--dataset, --text-maxlen), that one, as a run counts its dataset's; else 32 (at most the
/// preset's longest). Never more than the model's longest caption.
fn info_text_tokens(a: &InfoArgs, c: &ModelConfig) -> usize {
    let known = a.dataset.is_some() || a.text_maxlen.is_some();
    let default = if known { c.text_maxlen } else { BENCH_TEXT_TOKENS };
    a.shape.text_tokens.unwrap_or(default).min(c.text_maxlen)
}

fn describe_classes(n: Option<usize>) -> String {
    match n {
        Some(n) => super::plural(n, "class"),
        None => "no class labels".into(),
    }
}

/// The condition `model info` counted, and where a run's would come from.
fn conditioning_line(c: &ModelConfig, from_dataset: bool) -> String {
    let source = match from_dataset {
        true => "the dataset's",
        false => "a run takes its dataset's: --dataset DIR, or --classes N / --text-dim W --text-maxlen T",
    };
    match c.conditioning {
        Conditioning::Class { num_classes } => {
            format!("conditioning: class, {} ({source})", super::plural(num_classes, "class"))
        }
        Conditioning::Text => format!(
            "conditioning: text, {} wide, captions of up to {} tokens (cfg_uncond {} × {}; {source})",
            c.text_channels, c.text_maxlen, c.text_maxlen, c.text_channels
        ),
    }
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Info(a) => {
            let s = &a.shape;
            let (c, label, dataset) = info_config(&a)?;
            let lay = Layout::new(&c);
            let sched = match (&dataset.default_schedule, &s.template, &s.budget) {
                // (a spatial-patchify dataset's schedule is the tokenizer's, at twice the transformer's sides)
                (Some(d), None, None) if d.spatial_patchify => infinity_data::ScaleSchedule {
                    scales: d.scales.iter().map(|&[t, h, w]| [t, h / 2, w / 2]).collect(),
                    spatial_patchify: false,
                    ..d.clone()
                },
                (Some(d), None, None) => d.clone(),
                _ => s.catalog_schedule()?,
            };
            // (no caption is longer than the model's text_maxlen)
            let f = train_flops_per_token(&c, &sched.hw(), info_text_tokens(&a, &c));
            let patches = match c.apply_spatial_patchify {
                true => format!(" (spatial patchify: 2×2 × {} of the tokenizer's)", c.d_vae()),
                false => String::new(),
            };
            console!(
                "{label}: depth {}, width {}, heads {} (head dim {}), FFN {}, d {}{patches}",
                c.depth,
                c.embed_dim,
                c.num_heads,
                c.head_dim(),
                c.ffn_hidden(),
                c.d
            );
            console!("{}", conditioning_line(&c, a.dataset.is_some()));
            if let Some(n) = dataset.classes.filter(|_| c.conditioning == Conditioning::Text) {
                console!(
                    "  (the dataset has {} too: --classes {n} counts a class-conditioned model)",
                    super::plural(n, "class")
                );
            }
            console!("parameters: {} ({:.1} M)", lay.numel, lay.numel as f64 / 1e6);
            let picked = match dataset.default_schedule.is_some() && s.template.is_none() && s.budget.is_none() {
                true => " (the dataset's, as `infinity sample` picks it; --template and --budget count another)",
                false => "",
            };
            console!("schedule {}: L = {}{picked}", sched.name, sched.num_tokens());
            // (a spatial-patchify dataset names its schedules NAME/patchify)
            let on_dataset = |n: &String| n == &sched.name || n.strip_suffix("/patchify") == Some(sched.name.as_str());
            if !dataset.schedules.is_empty() && !dataset.schedules.iter().any(on_dataset) {
                console!(
                    "  (not one of the dataset's schedules, {}: --template and --budget pick one)",
                    dataset.schedules.join(", ")
                );
            }
            console!(
                "training FLOPs per token: {f:.3e} (forward + backward, attention included); per sample {:.3e}",
                f * sched.num_tokens() as f64
            );
            console_text!("{}", memory_table(&c, lay.numel, &sched, &a));
        }
        ModelCommand::Bench(a) => {
            let cuda = a.device == "cuda";
            if cuda && !cfg!(feature = "cuda") {
                bail!("--device cuda needs a build with the `cuda` feature (cargo build --release --features cuda)");
            }
            let gpu_only = [("--bf16", a.bf16), ("--recompute", a.recompute), ("--profile", a.profile)];
            let ignored: Vec<&str> = gpu_only.iter().filter(|f| f.1 && !cuda).map(|f| f.0).collect();
            if !ignored.is_empty() {
                console_err!("note: {} apply to --device cuda only; the CPU model runs f32", ignored.join(", "));
            }
            let (config, label) = config(&a.shape)?;
            let o = BenchOptions {
                config,
                label,
                batch: a.batch,
                template: a.shape.template.unwrap_or_else(|| Shape::TEMPLATE.into()),
                budget: a.shape.budget.unwrap_or_else(|| Shape::BUDGET.into()),
                text_tokens: a.shape.text_tokens.unwrap_or(BENCH_TEXT_TOKENS),
                steps: a.steps,
                python: a.python,
                cuda,
                peak_tflops: a.peak_tflops,
                recompute: a.recompute,
                bf16: a.bf16,
                profile: a.profile,
            };
            console!("| model | params | L | batch | train FLOPs/token | implementation | threads | tokens/s | GFLOP/s | MFU | peak MiB |");
            console!("|---|---|---|---|---|---|---|---|---|---|---|");
            console_text!("{}", bench::run(&o)?);
        }
        ModelCommand::CoordCheck(a) => coord_check(a)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// GPU memory per rank of a training step at each precision, with and without recomputation.
fn memory_table(c: &ModelConfig, numel: usize, sched: &infinity_data::ScaleSchedule, a: &InfoArgs) -> String {
    use crate::model::memory::{device_memory, gib, gib_to_bytes, largest_micro_batch, GpuStep, RUNTIME_MARGIN};
    let (b, l) = (a.batch, sched.num_tokens());
    let t = if c.has_cross_attention() { info_text_tokens(a, c) } else { 0 };
    let text = if t > 0 { format!(", {t} text tokens per sample") } else { String::new() };
    let zero1 = if a.world > 1 { format!(", ZeRO-1 over {} ranks", a.world) } else { String::new() };
    let mut out = format!(
        "\nGPU memory per rank of a training step (micro-batch {b} × {l} tokens{text}; \
         AdamW on the GPU{zero1}; the CUDA context and libraries add some 0.5–1 GiB, and the largest \
         micro-batch leaves them 1 GiB):\n\n"
    );
    let fit_col = a.gpu_gib.map(|g| format!(" largest micro-batch in {g} GiB |")).unwrap_or_default();
    out += &format!("| precision | recompute | weights + gradients | optimizer | activations | total |{fit_col}\n");
    out += &format!("|---|---|---|---|---|---|{}\n", if fit_col.is_empty() { "" } else { "---|" });
    for (bf16, recompute) in [(false, false), (false, true), (true, false), (true, true)] {
        let step = GpuStep {
            micro_batch: b,
            tokens: l,
            text_tokens: t,
            latent_hw: *sched.hw().last().expect("a schedule has scales"),
            bf16,
            recompute,
            device_optimizer: Some(a.world),
            ema: false,
        };
        let m = device_memory(c, numel, &step);
        let fit = a.gpu_gib.map(|g| {
            let budget = gib_to_bytes(g).saturating_sub(RUNTIME_MARGIN);
            let fits = largest_micro_batch(c, numel, &step, budget, 1 << 16);
            format!(" {} |", fits.map_or("none".to_string(), |b| b.to_string()))
        });
        out += &format!(
            "| {} | {} | {} | {} | {} | {} |{}\n",
            if bf16 { "bf16" } else { "f32" },
            if recompute { "yes" } else { "no" },
            gib(m.model),
            gib(m.optimizer),
            gib(m.activations()),
            gib(m.total()),
            fit.unwrap_or_default()
        );
    }
    out
}

fn coord_check(a: CoordArgs) -> anyhow::Result<()> {
    let preset = ModelConfig::named_preset(&a.preset).context("--preset")?;
    let conditioning = if a.text { Conditioning::Text } else { Conditioning::Class { num_classes: 16 } };
    let config = ModelConfig { conditioning, ..preset };
    let base = a.base_width.or(a.widths.first().copied()).context("--widths: give at least one")?;
    let mut o = CoordOptions {
        config,
        widths: a.widths,
        heads: a.heads,
        mup_base_width: None,
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        budget: a.budget,
        seed: a.seed,
    };
    for (name, mup) in [("standard parametrization", None), ("μP", Some(base))] {
        o.mup_base_width = mup;
        let base = mup.map_or(String::new(), |b| format!(", base width {b}"));
        console!("\n{name} ({}, {} AdamW steps, lr {}{base}):\n", a.preset, o.steps, o.lr);
        console_text!("{}", coord_check::table(&coord_check::run(&o)?));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        info: super::InfoArgs,
    }

    /// `model info --classes N --d D` counts the parameters a class-conditioned run of that dataset has.
    #[test]
    fn model_info_counts_a_class_models_parameters_as_a_run_does() {
        let a = Cli::parse_from(["info", "--preset", "tiny", "--classes", "24", "--d", "16"]).info;
        let (info, _, _) = super::info_config(&a).unwrap();
        // the CPU demo: the tiny preset, class-conditioned
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo-cpu.toml");
        let cfg = crate::train::config::TrainConfig::load(&demo, &[]).unwrap();
        let run = cfg.model.model_config(16, Some(24), None).unwrap();
        // (a dataset without the condition, or without any: the latter says how to write an unconditional one)
        let e = cfg.model.model_config(16, None, Some((32, 8))).unwrap_err().to_string();
        assert_eq!(
            e,
            "model.conditioning = \"class\", but the dataset has no class condition (it has text features of width \
             32: model.conditioning = \"text\" trains on them)"
        );
        let text = crate::train::config::ModelSection { conditioning: "text".into(), ..cfg.model.clone() };
        let e = text.model_config(16, Some(24), None).unwrap_err().to_string();
        assert!(e.ends_with("(it has 24 classes: model.conditioning = \"class\" trains on them)"), "{e}");
        let e = cfg.model.model_config(16, None, None).unwrap_err().to_string();
        assert!(e.ends_with("(nor any: for unconditional training, write it as one class, manifest `conditions.class = {\"num_classes\": 1}` and every class_label 0, and train with model.conditioning = \"class\")"), "{e}");
        let count = |c| crate::model::Layout::new(c).numel;
        assert_eq!(count(&info), count(&run));
        assert_ne!(
            count(&info),
            count(&super::info_config(&Cli::parse_from(["info", "--preset", "tiny"]).info).unwrap().0)
        );
    }

    /// `--width`, `--depth` and `--heads` give the model a run of those `model.*` settings trains.
    #[test]
    fn model_info_takes_a_sweeps_shape() {
        let args = ["info", "--preset", "layer12", "--width", "96", "--depth", "3", "--heads", "4", "--classes", "10"];
        let (info, label, _) = super::info_config(&Cli::parse_from(args).info).unwrap();
        assert_eq!(label, "layer12-w96-d3-h4");
        let mut model = crate::train::config::TrainConfig::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo-cpu.toml"),
            &[],
        )
        .unwrap()
        .model;
        model.preset = "layer12".into();
        (model.embed_dim, model.depth, model.num_heads) = (Some(96), Some(3), Some(4));
        let run = model.model_config(info.d, Some(10), None).unwrap();
        assert_eq!((info.depth, info.embed_dim, info.num_heads, info.block_chunks), (3, 96, 4, run.block_chunks));
        assert_eq!(crate::model::Layout::new(&info).numel, crate::model::Layout::new(&run).numel);
        let e = super::info_config(&Cli::parse_from(["info", "--width", "96", "--heads", "5"]).info).unwrap_err();
        assert!(format!("{e:#}").contains("layer12-w96-h5"), "{e:#}");
    }
}
