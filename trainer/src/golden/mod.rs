//! `infinity golden check DIR`: run a golden folder (docs/golden-format.md) through our model or our
//! bitwise self-correction and compare with what the reference produced, tensor by tensor; "sample"
//! folders through our sampler ([`sample`]).

mod sample;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use infinity_data::Catalog;
use infinity_kernels::rope::RopeTable;
use infinity_kernels::{bsq, compare, patchify};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::model::io::load_weights;
use crate::model::params::canonical_name;
use crate::model::{
    backward, forward, token_weights, Condition, Conditioning, Layout, ModelConfig, ModelInput, Params,
};

/// Tolerances, relative to the largest magnitude of the expected tensor (see docs/numerics.md).
pub const TOL_FORWARD: f64 = 1e-4;
pub const TOL_GRAD: f64 = 1e-3;
/// Teacher-forcing inputs of self-correction (values of order 1, f32 interpolation).
pub const TOL_BSQ_INPUT: f64 = 1e-5;
/// A bit may differ from the reference only where our residual is this close to 0.
pub const BIT_RESIDUAL_SLACK: f64 = 1e-5;

/// Why a device check cannot run in this build.
#[cfg(not(feature = "cuda"))]
const NOT_BUILT_WITH_CUDA: &str =
    "this `infinity` was built without the `cuda` feature (cargo build --release --features cuda)";

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub name: String,
    pub max_abs: f64,
    /// `max_abs / max|expected|`.
    pub rel: f64,
    pub tol: f64,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.rel <= self.tol
    }
}

#[derive(Debug, Default)]
pub struct GoldenReport {
    pub mode: String,
    pub comparisons: Vec<Comparison>,
    /// Bit mismatches that were tolerated, and anything else worth reading.
    pub notes: Vec<String>,
    /// Hard failures (bit mismatches away from zero, missing tensors).
    pub failures: Vec<String>,
}

impl GoldenReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.comparisons.iter().all(Comparison::ok)
    }

    fn compare(&mut self, name: &str, ours: &[f32], expected: &[f32], tol: f64) {
        if ours.len() != expected.len() {
            self.failures.push(format!("{name}: {} values, expected {}", ours.len(), expected.len()));
            return;
        }
        // a NaN in ours (or in the reference alone) is an infinite difference, so it fails
        let (max_abs, rel) = (compare::max_abs_diff(ours, expected), compare::max_rel_diff(ours, expected, 1e-12));
        self.comparisons.push(Comparison { name: name.into(), max_abs, rel, tol });
    }
}

/// The tensors of a safetensors file as f32 (or u8/i32 converted), by name; errors name the file.
struct Tensors {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Tensors {
    fn open(path: &Path) -> Result<Tensors> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let t = Tensors { path: path.to_path_buf(), bytes };
        t.view()?;
        Ok(t)
    }

    fn view(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", self.path.display()))
    }

    fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.view()?.tensor(name).map_err(|_| anyhow::anyhow!("{}: tensor `{name}` is missing", self.path.display()))
    }

    fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(name)?;
        let v =
            crate::model::io::tensor_f32(name, t.dtype(), t.data()).with_context(|| self.path.display().to_string())?;
        Ok((t.shape().to_vec(), v))
    }

    /// A float tensor of shape `want` (`legend` names its dimensions, for the error).
    fn f32_shaped(&self, name: &str, want: &[usize], legend: &str) -> Result<Vec<f32>> {
        let (found, v) = self.f32(name)?;
        self.shaped(name, v, &found, want, legend)
    }

    fn ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let t = self.tensor(name)?;
        let data = t.data();
        let v = match t.dtype() {
            Dtype::U8 => data.iter().map(|&v| v as i64).collect(),
            Dtype::I32 => data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            Dtype::I64 => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            other => bail!("{}: tensor `{name}`: expected an integer tensor, found {other:?}", self.path.display()),
        };
        Ok((t.shape().to_vec(), v))
    }

    /// An integer tensor of shape `want` (`legend` names its dimensions, for the error).
    fn ints_shaped(&self, name: &str, want: &[usize], legend: &str) -> Result<Vec<i64>> {
        let (found, v) = self.ints(name)?;
        self.shaped(name, v, &found, want, legend)
    }

    fn shaped<T>(&self, name: &str, v: Vec<T>, found: &[usize], want: &[usize], legend: &str) -> Result<Vec<T>> {
        ensure!(
            found == want,
            "{}: tensor `{name}` has shape {found:?}, expected {legend} = {want:?}",
            self.path.display()
        );
        Ok(v)
    }

    fn names(&self) -> Result<Vec<String>> {
        Ok(self.view()?.names().into_iter().map(String::from).collect())
    }
}

/// The whole number at `key` of config.json (`v`): a top-level key, or a dotted path into a section
/// (`constructor_kwargs.depth`), as the errors name it.
fn usize_of(v: &Value, key: &str) -> Result<usize> {
    match v.pointer(&format!("/{}", key.replace('.', "/"))) {
        None => bail!("config.json: `{key}` missing"),
        Some(x) => x
            .as_u64()
            .map(|x| x as usize)
            .with_context(|| format!("config.json: `{key}` = {x}: expected a whole number ≥ 0")),
    }
}

#[cfg(feature = "cuda")]
fn gpu_forward_backward(
    mc: &ModelConfig,
    lay: &Layout,
    p: &Params<f32>,
    inp: &ModelInput<f32>,
    grads: &mut Params<f32>,
) -> Result<infinity_kernels::bitwise_ce::BitwiseCe> {
    let mut m = crate::gpu::GpuModel::new(mc, lay, 0, false)?;
    m.upload_params(p)?;
    m.zero_grads()?;
    let ce = m.step(inp, true)?;
    m.add_grads_into(&mut grads.data)?;
    Ok(ce)
}

#[cfg(not(feature = "cuda"))]
fn gpu_forward_backward(
    _: &ModelConfig,
    _: &Layout,
    _: &Params<f32>,
    _: &ModelInput<f32>,
    _: &mut Params<f32>,
) -> Result<infinity_kernels::bitwise_ce::BitwiseCe> {
    bail!(NOT_BUILT_WITH_CUDA)
}

/// Check one golden folder on the CPU.
pub fn check(dir: &Path) -> Result<GoldenReport> {
    check_on(dir, false)
}

/// Check one golden folder, on the GPU when `cuda` (the model and the sampler through
/// `gpu::GpuModel`; bsq-only folders stay on the CPU: their device twin is tested against the CPU
/// one). The GPU's fused head never materialises a training step's logits, so a model folder's
/// `logits` are not compared there (its loss and every gradient are); a sample folder's `cond_logits`
/// are.
pub fn check_on(dir: &Path, cuda: bool) -> Result<GoldenReport> {
    let cfg_path = dir.join("config.json");
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", cfg_path.display()))?;
    let mode = cfg.get("mode").and_then(Value::as_str).context("config.json: `mode` missing")?.to_string();
    let schedule: Vec<(usize, usize)> = cfg
        .get("schedule")
        .and_then(Value::as_array)
        .context("config.json: `schedule` missing")?
        .iter()
        .map(|s| {
            let a: Vec<u64> = s.as_array().map(|v| v.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
            ensure!(
                a.len() == 3 && a[0] == 1 && a[1] > 0 && a[2] > 0,
                "config.json: schedule entries are [1, h, w] with h, w ≥ 1, found {s}"
            );
            Ok((a[1] as usize, a[2] as usize))
        })
        .collect::<Result<_>>()?;
    ensure!(!schedule.is_empty(), "config.json: `schedule` lists no scale");
    let (b, l, d) = (usize_of(&cfg, "B")?, usize_of(&cfg, "L")?, usize_of(&cfg, "d")?);
    ensure!(
        schedule.iter().map(|&(h, w)| h * w).sum::<usize>() == l,
        "config.json: L = {l} disagrees with the schedule"
    );
    let mut report = GoldenReport { mode: mode.clone(), ..Default::default() };
    // (a misspelt setting would otherwise pass unnoticed: upstream's other arguments are ignored)
    if let Some(k) = cfg.get("constructor_kwargs").and_then(Value::as_object) {
        let unknown: Vec<&String> = k.keys().filter(|key| !CONSTRUCTOR_KWARGS.contains(&key.as_str())).collect();
        if !unknown.is_empty() {
            report.notes.push(format!("constructor_kwargs: {unknown:?} not read (not settings this checks)"));
        }
    }
    match mode.as_str() {
        "bsq-only" => check_bsq(dir, &cfg, &schedule, (b, l, d), &mut report)?,
        "model" => check_model(dir, &cfg, &schedule, b, d, cuda, &mut report)?,
        "sample" => sample::check_sample(dir, &cfg, &schedule, (b, l, d), cuda, &mut report)?,
        other => bail!("config.json: unknown mode `{other}` (expected `model`, `sample` or `bsq-only`)"),
    }
    Ok(report)
}

/// Bitwise self-correction of `latent` against the reference. With spatial patchify (`config.json`'s
/// `apply_spatial_patchify`) `d` is the transformer's bits per token: the latent and the flip mask are
/// on the tokenizer's doubled schedule with `d/4` channels, and the labels and inputs compared are the
/// transformer's tokens, as training unshuffles them.
fn check_bsq(
    dir: &Path,
    cfg: &Value,
    schedule: &[(usize, usize)],
    (b, l, d): (usize, usize, usize),
    r: &mut GoldenReport,
) -> Result<()> {
    let patchify = switch(cfg.get("apply_spatial_patchify"), "apply_spatial_patchify")?;
    ensure!(!patchify || d % 4 == 0, "config.json: apply_spatial_patchify with d = {d}, not a multiple of 4");
    let (dv, vae) = match patchify {
        true => (d / 4, patchify::tokenizer_scales(schedule)),
        false => (d, schedule.to_vec()),
    };
    // (patchified: our outputs in the tokenizer's layout are unshuffled into the transformer's tokens)
    let unshuffle = patchify.then_some((dv, schedule));
    let t = Tensors::open(&dir.join("bsq.safetensors"))?;
    let (shape, latent) = t.f32("latent")?;
    let (hh, ww) = *vae.last().unwrap();
    ensure!(shape == [b, dv, 1, hh, ww], "latent has shape {shape:?}, expected [{b}, {dv}, 1, {hh}, {ww}]");
    let bld = [b, l, d];
    // (patchified, the mask is the tokenizer's: 4 of its tokens of d/4 bits to a transformer token)
    let flips = match patchify {
        true => t.ints_shaped("flip_mask", &[b, 4 * l, dv], "[B, Lv, dv]")?,
        false => t.ints_shaped("flip_mask", &bld, "[B, L, d]")?,
    };
    let pred = t.ints_shaped("pred_bits", &bld, "[B, L, d]")?;
    for (prefix, with_flips) in [("", true), ("noflip.", false)] {
        let gt = t.ints_shaped(&format!("{prefix}gt_bits"), &bld, "[B, L, d]")?;
        let x = t.f32_shaped(&format!("{prefix}x_blc_wo_prefix"), &[b, l - 1, d], "[B, L − 1, d]")?;
        let mut ours_x = Vec::new();
        let mut tolerated = 0;
        for bi in 0..b {
            let lat = &latent[bi * dv * hh * ww..(bi + 1) * dv * hh * ww];
            let mask: Vec<u8> = flips[bi * l * d..(bi + 1) * l * d].iter().map(|&v| v as u8).collect();
            let enc = bsq::self_correct(lat, dv, &vae, with_flips.then_some(&mask[..]));
            let (bits, residual) =
                (transformer_tokens(enc.bits, unshuffle, 0), transformer_tokens(enc.residual, unshuffle, 0));
            let mask = transformer_tokens(mask, unshuffle, 0);
            for (i, (&ours, &want)) in bits.iter().zip(&gt[bi * l * d..(bi + 1) * l * d]).enumerate() {
                if ours as i64 != want {
                    let res = residual[i] as f64;
                    let what = format!(
                        "{prefix}gt_bits[{bi}, {}, {}]: ours {ours}, reference {want}, our residual {res:.3e}",
                        i / d,
                        i % d
                    );
                    if res.abs() <= BIT_RESIDUAL_SLACK {
                        tolerated += 1;
                        r.notes.push(format!("tolerated {what}"));
                    } else {
                        r.failures.push(what);
                    }
                }
            }
            if with_flips {
                for (i, (&g, &m)) in gt[bi * l * d..(bi + 1) * l * d].iter().zip(&mask).enumerate() {
                    if pred[bi * l * d + i] != g ^ m as i64 {
                        r.failures.push(format!("pred_bits[{bi}, {}, {}] is not gt_bits xor flip_mask", i / d, i % d));
                        break;
                    }
                }
            }
            ours_x.extend(transformer_tokens(enc.x_wo_prefix, unshuffle, 1));
        }
        r.notes.push(format!("{prefix}gt_bits: {} bits compared, {tolerated} tolerated mismatches", b * l * d));
        r.compare(&format!("{prefix}x_blc_wo_prefix"), &ours_x, &x, TOL_BSQ_INPUT);
    }
    Ok(())
}

/// The `constructor_kwargs` keys a golden folder's model is built from.
const CONSTRUCTOR_KWARGS: [&str; 15] = [
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "norm_eps",
    "text_channels",
    "text_maxlen",
    "cos_attn",
    "shared_aln",
    "rope2d_each_sa_layer",
    "rope2d_normalized_by_hw",
    "add_lvl_embeding_only_first_block",
    "use_bit_label",
    "block_chunks",
    "apply_spatial_patchify",
];

/// One sample's self-correction output `[rows, dv]` as the transformer's tokens, from its scale
/// `first` on: with spatial patchify (`Some((dv, the transformer's schedule))`) each scale unshuffled,
/// else as it is.
fn transformer_tokens<T: Copy + Default>(
    v: Vec<T>,
    patchify: Option<(usize, &[(usize, usize)])>,
    first: usize,
) -> Vec<T> {
    match patchify {
        Some((dv, schedule)) => patchify::unshuffle_tokens(&v, 1, dv, schedule, first),
        None => v,
    }
}

/// A setting given as 0/1 or false/true (absent: off); anything else is an error naming `key`.
fn switch(v: Option<&Value>, key: &str) -> Result<bool> {
    match v {
        None => Ok(false),
        Some(v) => match (v.as_u64(), v.as_bool()) {
            (Some(0), _) | (_, Some(false)) => Ok(false),
            (Some(1), _) | (_, Some(true)) => Ok(true),
            _ => bail!("config.json: `{key}` = {v}, expected 0 or 1 (or false, true)"),
        },
    }
}

/// Our config of a text model from a golden `config.json`'s upstream constructor arguments
/// (`constructor_kwargs`) and `d`, refusing settings we do not implement.
pub fn model_config(cfg: &Value, d: usize) -> Result<ModelConfig> {
    let k = cfg.get("constructor_kwargs").context("config.json: `constructor_kwargs` missing")?;
    // (upstream's own defaults differ for some: a folder must say what its reference ran)
    let flag = |key: &str, want: i64| -> Result<()> {
        match k.get(key) {
            None => bail!("config.json: constructor_kwargs.{key} missing (this checks {want}; write it out)"),
            // (Python's False and True stand for 0 and 1 only)
            Some(v) if v.as_i64() == Some(want) || (want <= 1 && v.as_bool() == Some(want == 1)) => Ok(()),
            Some(v) => bail!("constructor_kwargs.{key} = {v}: only {want} is implemented"),
        }
    };
    flag("cos_attn", 1)?;
    flag("shared_aln", 1)?;
    flag("use_bit_label", 1)?;
    flag("add_lvl_embeding_only_first_block", 1)?;
    flag("rope2d_each_sa_layer", 1)?;
    flag("rope2d_normalized_by_hw", 2)?;
    let text_channels = k
        .get("text_channels")
        .or_else(|| cfg.get("text_channels"))
        .and_then(Value::as_u64)
        .context("config.json: constructor_kwargs.text_channels missing")? as usize;
    if let Some(top) = cfg.get("text_channels").filter(|t| t.as_u64() != Some(text_channels as u64)) {
        bail!("config.json: text_channels = {top}, constructor_kwargs.text_channels = {text_channels}");
    }
    // (absent: upstream's default; present, a number)
    let or_default = |key: &str, default: f64| -> Result<f64> {
        match k.get(key) {
            None => Ok(default),
            Some(v) => {
                v.as_f64().with_context(|| format!("config.json: constructor_kwargs.{key} = {v}, expected a number"))
            }
        }
    };
    let block_chunks = or_default("block_chunks", 1.0)?;
    ensure!(
        block_chunks.fract() == 0.0 && block_chunks >= 1.0,
        "config.json: constructor_kwargs.block_chunks = {block_chunks}, expected a whole number of at least 1"
    );
    let c = ModelConfig {
        depth: usize_of(cfg, "constructor_kwargs.depth")?,
        embed_dim: usize_of(cfg, "constructor_kwargs.embed_dim")?,
        num_heads: usize_of(cfg, "constructor_kwargs.num_heads")?,
        mlp_ratio: k.get("mlp_ratio").and_then(Value::as_f64).context("constructor_kwargs.mlp_ratio missing")?,
        d,
        text_channels,
        text_maxlen: usize_of(cfg, "constructor_kwargs.text_maxlen")?,
        norm_eps: or_default("norm_eps", 1e-6)?,
        cond_drop_rate: 0.0,
        drop_path_rate: 0.0,
        apply_spatial_patchify: switch(k.get("apply_spatial_patchify"), "constructor_kwargs.apply_spatial_patchify")?,
        conditioning: Conditioning::Text,
        block_chunks: block_chunks as usize,
    };
    c.validate().map_err(|e| anyhow::anyhow!("constructor_kwargs: {e}"))?;
    Ok(c)
}

/// What the model and sample folders share: the model their `constructor_kwargs` make with its
/// weights, the captions' text features `[Σ lens, Ct]` with their offsets `[B + 1]`, and the RoPE
/// table of the schedule.
struct ModelFolder {
    mc: ModelConfig,
    lay: Layout,
    p: Params<f32>,
    inputs: Tensors,
    kv: Vec<f32>,
    cu: Vec<usize>,
    /// The captions' lengths `[B]` (`cu`'s steps).
    lens: Vec<usize>,
    rope: RopeTable,
}

impl ModelFolder {
    fn open(dir: &Path, cfg: &Value, schedule: &[(usize, usize)], b: usize, d: usize) -> Result<ModelFolder> {
        let mc = model_config(cfg, d)?;
        let lay = Layout::new(&mc);
        let p = load_weights(&dir.join("weights.safetensors"), &mc, &lay)?;
        let inputs = Tensors::open(&dir.join("inputs.safetensors"))?;
        let cu: Vec<usize> =
            inputs.ints_shaped("text_cu_seqlens", &[b + 1], "[B + 1]")?.iter().map(|&v| v as usize).collect();
        let lens: Vec<usize> = cu.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        ensure!(
            cu[0] == 0 && lens.iter().all(|&n| (1..=mc.text_maxlen).contains(&n)),
            "{}: text_cu_seqlens {cu:?}: expected offsets from 0 of captions of 1 to text_maxlen = {} tokens",
            inputs.path.display(),
            mc.text_maxlen
        );
        let kv = inputs.f32_shaped("text_kv_compact", &[cu[b], mc.text_channels], "[Σ lens, text_channels]")?;
        // the captions' lengths, where config.json or inputs.safetensors says them too
        let said = |v: Vec<usize>, whose: &str| {
            ensure!(v == lens, "{whose} {v:?} disagree with text_cu_seqlens {cu:?} (lengths {lens:?})");
            Ok(())
        };
        if let Some(v) = cfg.get("text_lens") {
            let v: Vec<usize> = serde_json::from_value(v.clone())
                .map_err(|e| anyhow::anyhow!("config.json: `text_lens` = {v}: {e}"))?;
            said(v, "config.json: text_lens")?;
        }
        if inputs.names()?.iter().any(|n| n == "text_lens") {
            let v = inputs.ints_shaped("text_lens", &[b], "[B]")?.iter().map(|&n| n as usize).collect();
            said(v, &format!("{}: text_lens", inputs.path.display()))?;
        }
        let template =
            cfg.get("h_div_w_template").and_then(Value::as_str).context("config.json: `h_div_w_template` missing")?;
        let rope = RopeTable::new(mc.head_dim(), schedule, Catalog::upstream().rope_frame(template)?);
        Ok(ModelFolder { mc, lay, p, inputs, kv, cu, lens, rope })
    }
}

#[allow(clippy::too_many_arguments)]
fn check_model(
    dir: &Path,
    cfg: &Value,
    schedule: &[(usize, usize)],
    b: usize,
    d: usize,
    cuda: bool,
    r: &mut GoldenReport,
) -> Result<()> {
    let ModelFolder { mc, lay, p, inputs, kv, cu, rope, .. } = ModelFolder::open(dir, cfg, schedule, b, d)?;
    let l: usize = schedule.iter().map(|&(h, w)| h * w).sum();
    let x_wo_prefix = inputs.f32_shaped("x_blc_wo_prefix", &[b, l - 1, d], "[B, L − 1, d]")?;
    let gt = inputs.ints_shaped("gt_bits", &[b, l, d], "[B, L, d]")?;
    if let Some(i) = gt.iter().position(|v| !(0..=1).contains(v)) {
        bail!("{}: gt_bits holds {} at value {i}: expected bits, 0 or 1", inputs.path.display(), gt[i]);
    }
    let gt: Vec<u8> = gt.iter().map(|&v| v as u8).collect();
    let weights = token_weights(b, schedule, false);
    let dropped = vec![false; b];
    let inp = ModelInput {
        b,
        scales: schedule,
        rope: &rope,
        x_wo_prefix: &x_wo_prefix,
        cond: Condition::Text { kv_compact: &kv, cu_seqlens: &cu, dropped: &dropped },
        gt_bits: &gt,
        token_weights: &weights,
        label_smoothing: 0.0,
        drop_path: &[],
    };
    let mut grads = Params::zeros(&lay);
    let exp = Tensors::open(&dir.join("expected.safetensors"))?;
    let ce = if cuda {
        gpu_forward_backward(&mc, &lay, &p, &inp, &mut grads)?
    } else {
        let acts = forward(&mc, &lay, &p, &inp);
        backward(&mc, &lay, &p, &inp, &acts, &mut grads);
        let l = schedule.iter().map(|&(h, w)| h * w).sum::<usize>();
        r.compare("logits", &acts.logits, &exp.f32_shaped("logits", &[b, l, 2 * d], "[B, L, 2d]")?, TOL_FORWARD);
        acts.ce
    };
    r.compare("loss", &[ce.loss as f32], &exp.f32("loss")?.1, TOL_FORWARD);
    let rw = token_weights(b, schedule, true);
    let loss_rw: f64 = rw.iter().zip(&ce.token_loss).map(|(w, t)| w * t).sum();
    r.compare("loss_reweighted", &[loss_rw as f32], &exp.f32("loss_reweighted")?.1, TOL_FORWARD);
    let mut compared = std::collections::HashSet::new();
    for name in exp.names()?.into_iter().filter(|n| n.starts_with("grad.")) {
        let canon = canonical_name(&name["grad.".len()..], mc.depth, mc.block_chunks).unwrap_or_default();
        match lay.spec(&canon) {
            Some(spec) => {
                r.compare(&name, &grads.data[spec.offset..spec.offset + spec.numel()], &exp.f32(&name)?.1, TOL_GRAD);
                compared.insert(spec.name.clone());
            }
            None => r.failures.push(format!("{name}: not a parameter of this model")),
        }
    }
    // docs/golden-format.md: a gradient for every parameter (a folder without them checks nothing)
    for s in lay.specs.iter().filter(|s| !compared.contains(&s.name)) {
        r.failures.push(format!("grad.{}: missing from expected.safetensors", s.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::GoldenReport;

    #[test]
    fn a_nan_in_our_tensor_fails_the_comparison() {
        let mut report = GoldenReport::default();
        report.compare("loss", &[0.5, f32::NAN], &[0.5, 0.25], 1e-4);
        assert!(!report.ok(), "a NaN passed the golden check");
        let mut report = GoldenReport::default();
        report.compare("loss", &[0.5, 0.25], &[0.5, 0.25], 1e-4);
        assert!(report.ok());
    }
}
