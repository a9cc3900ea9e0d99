//! `infinity sample CKPT --class … | --caption … | --text-features … -o grid.png [--bits bits.safetensors]`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use infinity_data::inspect::save_grid_noted;
use infinity_data::manifest::write_atomic;
use infinity_data::Manifest;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::plural;
use super::weights_file::WeightsFileArgs;
use crate::export::{load_export, read_export};
use crate::infer::{self, SchedulePick};
use crate::model::sample::{SampleCondition, SampleOptions};
use crate::model::{Conditioning, Layout, ModelConfig};
use crate::train::compute::{Compute, DeviceRequest};
use crate::train::config::{DeviceChoice, Precision};

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A checkpoint folder, a run folder (its newest complete checkpoint), an `infinity export` folder
    /// (its weights, with the schedules and tokenizer its config.json and folder hold), or a bare weights
    /// file with --config.
    ckpt: PathBuf,
    /// Class ids or names (comma-separated, or `all`) for class-conditioned models.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    class: Vec<String>,
    /// A caption (repeatable); embedded with the synthetic dataset's word table.
    #[arg(long)]
    caption: Vec<String>,
    /// Text features from your encoder: a safetensors file, one `[tokens, Ct]` tensor per caption.
    #[arg(long, value_name = "FILE", conflicts_with = "caption")]
    text_features: Option<PathBuf>,
    /// A negative prompt (text models, with guidance): the unconditional rows take its features instead
    /// of the learned `cfg_uncond`; embedded as `--caption` is.
    #[arg(long, value_name = "TEXT")]
    negative_caption: Option<String>,
    /// A negative prompt's features from your encoder: a safetensors file of one `[tokens, Ct]` tensor.
    #[arg(long, value_name = "FILE", conflicts_with = "negative_caption")]
    negative_text_features: Option<PathBuf>,
    /// Samples per condition (one grid row per condition).
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Classifier-free guidance scale (1 = none); upstream's notebook uses 3, scripts/infer.sh 4. One
    /// value, or one per scale (comma-separated, upstream's `cfg_list`; a longer list: its first, as there).
    #[arg(long, value_delimiter = ',', default_value = "3", allow_negative_numbers = true)]
    cfg: Vec<f64>,
    /// Temperature (upstream's inference scripts: 0.5; its 8B: 1.0). One value, or one per scale (as --cfg).
    #[arg(long, value_delimiter = ',', default_value = "0.5", allow_negative_numbers = true)]
    tau: Vec<f64>,
    /// Where guidance applies (upstream's `cfg_insertion_layer`): 0 on the logits (the default);
    /// −k on the hidden states after block depth − k (−1: after the last; k < depth), each half then carrying
    /// the mix. Several: `0,-1`. Without 0 the logits are the conditional rows'.
    #[arg(long, value_delimiter = ',', default_value = "0", allow_negative_numbers = true)]
    cfg_insertion_layer: Vec<i64>,
    /// Per-bit top-p (0 = off; upstream's `gen_one_img` default 0.97).
    #[arg(long, default_value_t = 0.97, allow_negative_numbers = true)]
    top_p: f64,
    /// Per-bit top-k (upstream's `top_k`): 1 samples each bit's likelier class (greedy per bit); 0 or
    /// 2 and more keep both classes of a bit (upstream's default 900 filters nothing).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Aspect-ratio template of the schedule (`1.000`, `0.666`, …); default the square one where the
    /// dataset has rows of it, else the one of the most rows.
    #[arg(long)]
    template: Option<String>,
    /// The schedule by its name in the dataset's manifest (where several share a template: one per
    /// pixel budget).
    #[arg(long, value_name = "NAME", conflicts_with = "template")]
    schedule: Option<String>,
    /// Dataset folder (schedules, tokenizer, class names); default the one the run trained on (a weights
    /// file's: --config's data.dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Image grid (.png or .jpg), decoded with the dataset's built-in tokenizer; its folder is made.
    #[arg(short, long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write the sampled bits `[N, L, d]` (u8) and the schedule for an external decoder, in the
    /// tokenizer's layout (the dataset's schedule and `d`; with spatial patchify, not the model's tokens).
    #[arg(long, value_name = "FILE")]
    bits: Option<PathBuf>,
    /// Sample with the moving average of the weights (`optim.ema_decay`; upstream's training checkpoint:
    /// `trainer.gpt_ema_fsdp`) instead of the weights (an export holds the one it was exported with).
    #[arg(long)]
    ema: bool,
    /// Where the transformer runs: `auto` (a GPU when this build has CUDA and one is visible), `cpu`
    /// or `cuda`. The bits are the same on both wherever the logits round alike.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// The GPU's matmul precision (`bf16`: upstream's autocast inference); default the run's
    /// `run.precision`. The CPU computes in f32.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    #[command(flatten)]
    weights: WeightsFileArgs,
}

pub fn run(a: SampleArgs) -> Result<ExitCode> {
    ensure!(a.n > 0, "--n must be positive");
    // (every sample is drawn in one batch, in memory: a number beyond this is a typo, not a request)
    const MAX_N: usize = 4096;
    ensure!(
        a.n <= MAX_N,
        "--n {}: at most {MAX_N} a condition (all are drawn at once, in memory); sample again with another --seed for more",
        a.n
    );
    ensure!(a.tau.iter().all(|&t| t > 0.0 && t.is_finite()), "--tau must be positive and finite, found {:?}", a.tau);
    ensure!(
        a.cfg.iter().all(|c| c.is_finite()),
        "--cfg must be finite numbers (the guidance scale), found {:?}",
        a.cfg
    );
    ensure!((0.0..=1.0).contains(&a.top_p), "--top-p must be in [0, 1] (0 or 1: no filtering)");
    // the output's format and folders first: a bad name fails before the sampling, not after
    infinity_data::inspect::grid_format(&a.out)?;
    for path in std::iter::once(&a.out).chain(&a.bits) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    if let Some(bits) = &a.bits {
        refuse_to_overwrite(bits, &a.out)?;
    }
    let Opened { ck, ema, manifest: m, rows, data_dir } = open(&a)?;
    if let Some(why) = infer::dataset_mismatch(&ck.model, &m) {
        bail!("{}: {why}: not the model's dataset (pass --data with its own)", data_dir.display());
    }
    if let Some(why) = infer::tokenizer_mismatch(ck.tokenizer.as_deref(), &ck.data_dir, &data_dir, &m) {
        let which = match &a.data {
            Some(_) => format!("--data {}", data_dir.display()),
            None => format!("{} (the run's data.dir: replaced since?)", data_dir.display()),
        };
        bail!(
            "{which}: {why}: the sampled bits would be decoded with another tokenizer's basis; pass --data with the \
             model's dataset (or one made with its tokenizer)"
        );
    }
    let pick = match (&a.schedule, &a.template) {
        (Some(name), _) => SchedulePick::Name(name),
        (None, Some(template)) => SchedulePick::Template(template),
        (None, None) => SchedulePick::Default,
    };
    let sched = infer::pick_schedule(&m, &rows, pick)?;
    let rows_of_sched = m.schedules.iter().position(|s| s.name == sched.name).and_then(|k| rows.get(k));
    // (with --data, the warning below names a schedule the run's dataset lacks)
    if a.data.is_none() && rows.iter().sum::<u64>() > 0 && rows_of_sched == Some(&0) {
        console_err!(
            "warning: the model's dataset holds no rows of the `{}` schedule: the model never trained on it",
            sched.name
        );
    }
    if let Some(warning) = a.data.as_ref().and_then(|_| infer::untrained_schedule_warning(&ck.data_dir, sched)) {
        console_err!("warning: {warning}");
    }

    // the tokenizer before the sampling: a missing or damaged file fails now, not after it (with --bits,
    // the bits are still written, said now)
    let tokenizer = match infer::tokenizer(&data_dir, &m) {
        Ok(t) => Ok(t),
        Err(e) if a.bits.is_some() => {
            console_err!("warning: {e:#}: no image will be written, only the bits");
            Err(e)
        }
        Err(e) => return Err(e.context("decoding the samples; pass --bits FILE to write the sampled bits alone")),
    };
    if matches!(tokenizer, Ok(None)) && a.bits.is_none() {
        bail!("the dataset's tokenizer `{}` is not built in; write the bits with --bits", m.tokenizer.name);
    }
    let (cond, rows) = condition(&a, &ck.model, &m)?;
    let lay = Layout::new(&ck.model);
    // a condition's samples keyed by it, not by their place in the batch: `--class 5 --n 4` draws the
    // class-5 row of `--class 0,5 --n 4`
    let keys = cond.keys(ck.model.text_channels);
    let opts = SampleOptions {
        cfg: a.cfg.clone(),
        tau: a.tau.clone(),
        top_p: a.top_p,
        top_k: a.top_k,
        seed: a.seed,
        keys,
        cfg_insertion_layer: a.cfg_insertion_layer.clone(),
    };
    // (the schedule named where the error is about its scales)
    opts.check(sched.scales.len(), ck.model.depth).map_err(|e| match e.contains("scales") {
        true => anyhow::anyhow!("{e} (the {} schedule)", sched.name),
        false => anyhow::anyhow!("{e}"),
    })?;
    // (of the values the schedule's scales take: the rest are never read)
    let negative = matches!(&cond, SampleCondition::Text { negative: Some(_), .. });
    let guided = a.cfg.iter().take(sched.scales.len()).any(|&g| g != 1.0);
    if guided && !negative && ck.model.cond_drop_rate == 0.0 {
        let unconditional = match ck.model.conditioning {
            Conditioning::Class { .. } => "the null class's",
            Conditioning::Text => "`cfg_uncond`'s",
        };
        console_err!(
            "warning: the model's config has model.cond_drop_rate = 0: the unconditional prediction guidance mixes \
             in ({unconditional}) is trained only by dropping the condition, so unless a model it started from did, \
             it is untrained (--cfg 1 samples without guidance)"
        );
    }
    ensure!(
        !negative || guided,
        "a negative prompt takes effect through guidance: give a --cfg other than 1 (for one of the {} scales of the \
         {} schedule at least)",
        sched.scales.len(),
        sched.name
    );
    for (name, v) in [("--cfg", &a.cfg), ("--tau", &a.tau)] {
        let k = sched.scales.len();
        if v.len() > k {
            console_err!(
                "warning: {name}: {} values for the {k} scales of the {} schedule: the first {k} are taken (as \
                 upstream's per-scale lists are)",
                v.len(),
                sched.name
            );
        }
    }
    let bf16 = a.precision.unwrap_or(ck.precision) == Precision::Bf16;
    let want =
        DeviceRequest { setting: "--device", device: a.device, bf16, recompute: false, trains: false, deferred: false };
    let mut compute = Compute::open_as(&want, &ck.model, &lay)?;
    if bf16 && compute.gpu_name().is_none() {
        console!("precision: f32 (bf16 is the GPU's arithmetic; the CPU model computes in f32)");
    }
    let t0 = std::time::Instant::now();
    let s = infer::sample_schedule(&ck.model, &lay, compute.sampler(&ck.params)?, &cond, sched, &opts)?;
    console!(
        "sampled {} ({} per condition) on the {} schedule `{}` ({} scales, {} tokens) from {}{} in {:.1} s",
        plural(s.bits.len(), "image"),
        a.n,
        sched.h_div_w_template,
        sched.name,
        sched.scales.len(),
        infinity_kernels::bsq::num_tokens(&ck.model.token_scales(&sched.hw())),
        ck.described(),
        if ema { " (its moving average)" } else { "" },
        t0.elapsed().as_secs_f64()
    );
    console!("rows: {}", rows.join(" | "));

    // what made these samples, in the grid (a PNG's iTXt `infinity_sample`) and the bits' metadata: the
    // same command with these settings draws them again
    let absolute = |p: &Path| {
        let whole = p.canonicalize().or_else(|_| std::path::absolute(p));
        whole.unwrap_or_else(|_| p.to_path_buf()).display().to_string()
    };
    let negative = a.negative_caption.clone().or(a.negative_text_features.as_ref().map(|f| f.display().to_string()));
    let made_by = serde_json::json!({
        "source": absolute(&ck.dir),
        "config": a.weights.config.as_deref().map(absolute),
        "set": a.weights.set,
        "data": absolute(&data_dir),
        "text_features": a.text_features.as_deref().map(absolute),
        "step": ck.step,
        "ema": ema,
        "schedule": sched.name,
        "conditions": rows,
        "negative_caption": a.negative_caption,
        "negative_text_features": a.negative_text_features.as_deref().map(absolute),
        "n": a.n,
        "seed": a.seed,
        "cfg": a.cfg,
        "tau": a.tau,
        "top_p": a.top_p,
        "top_k": a.top_k,
        "cfg_insertion_layer": a.cfg_insertion_layer,
        "device": compute.gpu_name().unwrap_or("cpu"),
        "precision": if bf16 && compute.gpu_name().is_some() { "bf16" } else { "f32" },
        "infinity": env!("CARGO_PKG_VERSION"),
    });
    if let Some(path) = &a.bits {
        // the tokenizer's layout: its schedule's tokens (with spatial patchify, twice the sides)
        let (n, l, d) = (s.bits.len(), sched.num_tokens(), ck.model.d_vae());
        let flat: Vec<u8> = s.tokenizer_bits.concat();
        // one metadata key (a JSON object): safetensors writes several in hash order, and the same seed
        // must give the same file
        let about = serde_json::json!({
            "schedule": sched,
            "conditions": rows,
            "negative_prompt": negative,
            "bit_order": "bits[i, l, c] is bit c of token l of sample i; 1 is the code +1/√d, 0 is −1/√d",
            "made_by": made_by,
        });
        let meta: HashMap<String, String> = [("infinity_sample".to_string(), about.to_string())].into();
        let bytes = safetensors::serialize([("bits", TensorView::new(Dtype::U8, vec![n, l, d], &flat)?)], Some(meta))?;
        write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        console!("wrote {}", path.display());
    }
    // (an image an earlier sampling left at -o is not this one's: said, where none is written)
    let earlier = match a.out.exists() {
        true => format!("; {} is an earlier one, left as it was", a.out.display()),
        false => String::new(),
    };
    match tokenizer {
        Err(e) => console!("no image: {e:#}{earlier}"),
        Ok(Some(tok)) => {
            let notes = [("infinity_sample", made_by.to_string())];
            save_grid_noted(&infer::decode(&tok, &s, sched), a.n, &a.out, &notes)?;
            let kept = match a.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
                true => "",
                false => " (a JPEG keeps no record of what made it: a .png or --bits does)",
            };
            console!("wrote {}{kept}", a.out.display());
        }
        Ok(None) => {
            console!(
                "no image: the dataset's tokenizer `{}` is not built in; decode the bits{earlier}",
                m.tokenizer.name
            )
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuse `--bits FILE` where it is `-o`'s file, or an existing file this command did not write (the
/// weights being sampled, a dataset's tokenizer or manifest): only an earlier `--bits` output, whose
/// metadata says `infinity_sample`, is overwritten.
fn refuse_to_overwrite(bits: &Path, grid: &Path) -> Result<()> {
    // (their folders exist: each named from the root, links and `..` resolved)
    let full = |p: &Path| -> Option<PathBuf> {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(dir.canonicalize().ok()?.join(p.file_name()?))
    };
    let same = |a: &Path, b: &Path| full(a).is_some() && full(a) == full(b);
    ensure!(!same(bits, grid), "--bits {} and -o name the same file", bits.display());
    if !bits.exists() {
        return Ok(());
    }
    let written_here = || -> Option<bool> {
        let mut f = std::fs::File::open(bits).ok()?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).ok()?;
        let n = u64::from_le_bytes(len);
        let mut header = vec![0u8; usize::try_from(n).ok().filter(|&n| n < 1 << 20)?];
        f.read_exact(&mut header).ok()?;
        let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
        Some(header["__metadata__"].get("infinity_sample").is_some())
    };
    ensure!(
        written_here() == Some(true),
        "--bits {}: an existing file that `infinity sample --bits` did not write (no infinity_sample metadata): not \
         overwritten; name another file, or remove it first",
        bits.display()
    );
    Ok(())
}

/// The model to sample and the dataset description that goes with it.
struct Opened {
    ck: crate::train::checkpoint::CheckpointModel,
    /// The weights are the moving average.
    ema: bool,
    manifest: Manifest,
    /// The rows of each of its schedules (none known: an export of an earlier build).
    rows: Vec<u64>,
    /// The folder of the manifest's tokenizer file (and of the dataset, for the messages).
    data_dir: PathBuf,
}

/// A checkpoint or run folder with its run's dataset (or `--data`), a weights file with its `--config`'s
/// dataset (or `--data`), or an `infinity export` folder with the dataset description its config.json
/// carries and the tokenizer copied beside it.
fn open(a: &SampleArgs) -> Result<Opened> {
    let load = |dir: &PathBuf| {
        Manifest::load(dir)
            .with_context(|| format!("the dataset {} (schedules and tokenizer; pass --data)", dir.display()))
    };
    a.weights.check(&a.ckpt)?;
    if a.weights.config.is_some() || read_export(&a.ckpt).is_none() {
        let ck = a.weights.load(&a.ckpt, a.data.as_deref(), a.ema)?;
        let data_dir = a.data.clone().unwrap_or_else(|| ck.data_dir.clone());
        let manifest = load(&data_dir)?;
        // (of the schedules the model trained on: with --data, as the run's own dataset has them)
        let rows = match &a.data {
            None => infer::rows_by_schedule(&manifest),
            Some(_) => Manifest::load(&ck.data_dir)
                .map(|t| infer::rows_matching(&t, &infer::rows_by_schedule(&t), &manifest))
                .unwrap_or_default(),
        };
        return Ok(Opened { manifest, rows, ck, ema: a.ema, data_dir });
    }
    let export = load_export(&a.ckpt, a.ema)?;
    console!("{}: an export of {}", a.ckpt.display(), export.source);
    let (manifest, data_dir, rows) = match (&a.data, export.dataset) {
        (Some(dir), carried) => {
            let m = load(dir)?;
            let rows = carried.map(|(t, _, rows)| infer::rows_matching(&t, &rows, &m)).unwrap_or_default();
            (m, dir.clone(), rows)
        }
        (None, Some(dataset)) => dataset,
        (None, None) => bail!(
            "{}: its config.json has no data section (the dataset was not at hand at export): pass --data with \
             the model's dataset",
            a.ckpt.display()
        ),
    };
    Ok(Opened { ck: export.model, ema: export.ema, manifest, rows, data_dir })
}

/// The condition of every sample (each given condition `n` times) and a label per grid row. The dataset's
/// manifest `m` names the classes and embeds captions (a dataset of the model's kind: checked before).
fn condition(a: &SampleArgs, model: &ModelConfig, m: &Manifest) -> Result<(SampleCondition, Vec<String>)> {
    let (kind, text_maxlen) = (&model.conditioning, model.text_maxlen);
    let text_given = !a.caption.is_empty() || a.text_features.is_some();
    match kind {
        Conditioning::Class { .. } => {
            ensure!(!text_given, "this model is class-conditioned: use --class");
            let info = m.conditions.class.as_ref().context("the dataset has no class condition")?;
            let specs = if a.class.is_empty() {
                console_err!("no --class given: sampling every class ({}), {} each", info.num_classes, a.n);
                vec!["all".to_string()]
            } else {
                a.class.clone()
            };
            ensure!(
                a.negative_caption.is_none() && a.negative_text_features.is_none(),
                "negative prompts are for text-conditioned models; this one is class-conditioned"
            );
            let ids = infer::resolve_classes(&specs, info)?;
            let rows = ids.iter().map(|&i| info.names.get(i).cloned().unwrap_or(i.to_string())).collect();
            Ok((SampleCondition::Class(ids).repeat(a.n, 0), rows))
        }
        Conditioning::Text => {
            ensure!(a.class.is_empty(), "this model is text-conditioned: use --caption or --text-features");
            let info = m.conditions.text.as_ref().context("the dataset has no text condition")?;
            let ((kv, lens), rows) = match &a.text_features {
                Some(f) => {
                    let (kv, lens, names) = infer::text_features_file(f, model.text_channels, text_maxlen)?;
                    ((kv, lens), names)
                }
                None if !a.caption.is_empty() => {
                    let (kv, lens) = infer::caption_features(&a.caption, info)?;
                    if let Some(i) = lens.iter().position(|&n| n > text_maxlen) {
                        bail!(
                            "--caption {:?} has {} words; the model takes captions of at most {text_maxlen} tokens",
                            a.caption[i],
                            lens[i]
                        );
                    }
                    ((kv, lens), a.caption.clone())
                }
                None => bail!("a text-conditioned model needs --caption or --text-features"),
            };
            let negative = match (&a.negative_caption, &a.negative_text_features) {
                (Some(c), _) => {
                    let (kv, lens) = infer::caption_features(std::slice::from_ref(c), info)?;
                    ensure!(lens[0] <= text_maxlen, "--negative-caption {c:?}: more than {text_maxlen} tokens");
                    Some(kv)
                }
                (None, Some(f)) => {
                    let (kv, lens, _) = infer::text_features_file(f, model.text_channels, text_maxlen)?;
                    ensure!(
                        lens.len() == 1,
                        "{}: one tensor for the negative prompt, found {}",
                        f.display(),
                        lens.len()
                    );
                    Some(kv)
                }
                (None, None) => None,
            };
            Ok((SampleCondition::Text { kv, lens, negative }.repeat(a.n, info.width as usize), rows))
        }
    }
}
