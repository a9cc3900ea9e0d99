//! Model weights as safetensors with upstream names: the format of checkpoints, exports and golden
//! folders. Loading accepts either block layout and upstream's zero buffers, PyTorch's `.pth` files
//! too (`weights_file`, `torch_file`), and reports every name or shape that does not match the model
//! at once.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::Dtype;

use super::params::{canonical_name, chunked_name};
use super::streamed::{Lazy, Values};
pub use super::torch_file::StateDict;
use super::weight_shards;
use super::weights_file::WeightsFile;
use super::{Layout, ModelConfig, Params};

/// Element type of saved weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    Bf16,
}

/// The tensors of `p` (f32 or bf16) under upstream names, the blocks in `chunks` chunks: `blocks.N`
/// keys for 1, `block_chunks.C.module.J` for more (upstream's `Infinity(block_chunks=…)` registers
/// those). `zero_k_bias` buffers are included so the file loads into upstream's module with
/// `strict=True`. Each tensor's bytes are made as it is written ([`streamed`](super::streamed)).
pub fn weight_tensors<'a>(
    cfg: &ModelConfig,
    lay: &Layout,
    p: &'a Params<f32>,
    dtype: SaveDtype,
    chunks: usize,
) -> Result<Vec<(String, Lazy<'a>)>> {
    if chunks == 0 || !cfg.depth.is_multiple_of(chunks) {
        bail!("{chunks} block chunks do not divide the model's depth {}", cfg.depth);
    }
    let name = |n: &str| chunked_name(n, cfg.depth, chunks);
    let values = |v: &'a [f32]| match dtype {
        SaveDtype::F32 => Values::F32(v),
        SaveDtype::Bf16 => Values::Bf16(v),
    };
    let mut tensors: Vec<(String, Lazy)> = lay
        .specs
        .iter()
        .map(|s| {
            (name(&s.name), Lazy { values: values(&p.data[s.offset..s.offset + s.numel()]), shape: s.shape.clone() })
        })
        .collect();
    let c = cfg.embed_dim;
    let mut buffers = vec!["text_proj_for_sos.ca.zero_k_bias".to_string()];
    for n in 0..cfg.depth {
        buffers.push(format!("blocks.{n}.sa.zero_k_bias"));
        buffers.push(format!("blocks.{n}.ca.zero_k_bias"));
    }
    let zeros_of = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    for b in buffers.into_iter().filter(|b| lay.spec(&b.replace("zero_k_bias", "v_bias")).is_some()) {
        tensors.push((name(&b), Lazy { values: Values::Zeros(zeros_of, c), shape: vec![c] }));
    }
    Ok(tensors)
}

/// `path` mapped into memory, read-only: a checkpoint's files are read through the page cache, which
/// the ranks of a node share, instead of into a copy of each file per rank (at 8B parameters the
/// moments' file alone is 67 GB).
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    // SAFETY: the files mapped are checkpoints, exports and weights files, which nothing writes once
    // they are complete (ours are written in a temporary folder or file and renamed into place); one
    // truncated by another process while it is read would stop this one with SIGBUS, as with
    // safetensors' own loaders, which map files the same way.
    unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("reading {}", path.display()))
}

/// Values of a safetensors tensor (f32, bf16, f16 or f64) as f32.
pub fn tensor_f32(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => bail!("tensor `{name}`: expected f32, bf16, f16 or f64, found {other:?}"),
    })
}

/// Load upstream-named weights (either block layout; `*.zero_k_bias` must be zero). Every unknown
/// name, shape mismatch and missing parameter is listed in one error.
pub fn load_weights(path: &Path, cfg: &ModelConfig, lay: &Layout) -> Result<Params<f32>> {
    load_state_dict(path, StateDict::Weights, cfg, lay)
}

/// [`load_weights`] of `which` of the file's state dicts (upstream's training checkpoint keeps the
/// moving average beside the weights).
pub fn load_state_dict(path: &Path, which: StateDict, cfg: &ModelConfig, lay: &Layout) -> Result<Params<f32>> {
    let mut p = Params::zeros(lay);
    fill_weights(path, which, cfg, lay, Window::whole(&mut p), |_| false)?;
    Ok(p)
}

/// Parameters `range` of `path`'s weights (a ZeRO-1 rank's shard of a moving average), the whole file
/// checked as [`load_weights`] checks it (each tensor decoded in turn); only the part is kept.
pub fn load_weights_part(path: &Path, cfg: &ModelConfig, lay: &Layout, range: Range<usize>) -> Result<Vec<f32>> {
    let mut part = vec![0.0; range.len()];
    fill_weights(path, StateDict::Weights, cfg, lay, Window { data: &mut part, at: range.start }, |_| false)?;
    Ok(part)
}

/// Start from `path`'s weights (upstream's `--rush_resume`): `p` holds a fresh initialisation, and
/// every parameter is replaced by the file's tensor of the same name and shape. The transformer body
/// must match; the layers tied to the tokenizer's bits or to the conditioning (`word_embed`, `head`,
/// `class_emb`, the text layers, the blocks' cross-attention) keep their fresh values where the file
/// lacks them or has another shape, and the file's tensors of such layers that this model has not are
/// left out. `which`: of upstream's training checkpoints, the trained weights or their moving average
/// (other files hold one set of weights: the moving average is refused for them). Returns one line per
/// tensor kept fresh or left out.
pub fn init_from_weights(
    path: &Path,
    which: StateDict,
    cfg: &ModelConfig,
    lay: &Layout,
    p: &mut Params<f32>,
) -> Result<Vec<String>> {
    fill_weights(path, which, cfg, lay, Window::whole(p), reinitialisable)
}

/// [`init_from_weights`] for parameters `at..at + part.len()` alone (a rank's shard of the moving
/// average a fresh run starts), `part` holding their values before: what the file lacks keeps them.
pub fn init_from_weights_part(
    path: &Path,
    which: StateDict,
    (cfg, lay): (&ModelConfig, &Layout),
    part: &mut [f32],
    at: usize,
) -> Result<Vec<String>> {
    fill_weights(path, which, cfg, lay, Window { data: part, at }, reinitialisable)
}

/// Parameters a fine-tune may change the shape of: what depends on the bits per token (d), the
/// number of classes, or the conditioning (class or text).
fn reinitialisable(canonical: &str) -> bool {
    const TOP: [&str; 7] =
        ["word_embed.", "head.", "class_emb.", "cfg_uncond", "text_norm.", "text_proj_for_sos.", "text_proj_for_ca."];
    let block_part = canonical.strip_prefix("blocks.").and_then(|r| r.split_once('.')).map(|(_, part)| part);
    TOP.iter().any(|t| canonical.starts_with(t))
        || block_part.is_some_and(|part| part.starts_with("ca.") || part.starts_with("ca_norm."))
}

/// Buffers of older upstream checkpoints that upstream's `load_state_dict` drops.
const LEGACY_BUFFERS: [&str; 4] =
    ["lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"];

/// The block chunks a file's keys name and the blocks in each: `None` for `blocks.N` keys, else
/// (C + 1, J + 1) for the highest `block_chunks.C.module.J.…`.
fn file_block_chunks<'a>(names: impl Iterator<Item = &'a str>) -> Option<(usize, usize)> {
    let index = |n: &str| -> Option<(usize, usize)> {
        let (c, rest) = n.strip_prefix("block_chunks.")?.split_once('.')?;
        let (j, _) = rest.strip_prefix("module.")?.split_once('.')?;
        Some((c.parse().ok()?, j.parse().ok()?))
    };
    names.filter_map(index).fold(None, |most, (c, j)| {
        let (mc, mj) = most.unwrap_or((0, 0));
        Some((mc.max(c + 1), mj.max(j + 1)))
    })
}

/// Why tensor `name`'s values `v` cannot be loaded, where some are not finite: a diverged run's weights
/// would only train or sample NaN (never lenient: a fresh value would hide that the file is broken).
fn not_finite(name: &str, v: &[f32]) -> Option<String> {
    let i = v.iter().position(|x| !x.is_finite())?;
    let bad = v.iter().filter(|x| !x.is_finite()).count();
    Some(format!("`{name}`: {bad} of {} values not finite (the first: {} at {i})", v.len(), v[i]))
}

/// The prefix every name shares of a module saved inside wrappers (`module.` of DDP, `_orig_mod.` of
/// torch.compile, nested), or "".
fn wrapper_prefix<'a>(names: impl Iterator<Item = &'a str> + Clone) -> String {
    let (mut prefix, any) = (String::new(), names.clone().next().is_some());
    // (every name starts with `prefix` here: an ASCII cut)
    while let Some(w) =
        ["module.", "_orig_mod."].into_iter().find(|w| any && names.clone().all(|n| n[prefix.len()..].starts_with(w)))
    {
        prefix.push_str(w);
    }
    prefix
}

/// What a file's tensors say of the model they are of, for an error that they do not fit this one.
struct FileModel {
    /// Width and depth, where its `lvl_embed` and blocks say.
    shape: Option<(usize, usize)>,
    /// Heads, from the heads' scales (heads change only those: a list of them alone does not say why).
    heads: Option<usize>,
    /// `class` (it keeps `class_emb`) or `text` (`cfg_uncond`).
    kind: Option<&'static str>,
}

impl FileModel {
    /// Of `tensors` (`chunks` their block chunks, which hold `depth` blocks when chunked).
    fn of(tensors: &[(String, super::weights_file::FileTensor)], chunks: usize, depth: usize) -> FileModel {
        let has = |name: &str| tensors.iter().any(|(n, _)| n == name);
        let width = tensors.iter().find(|(n, _)| n == "lvl_embed.weight").and_then(|(_, t)| t.shape.get(1).copied());
        let blocks: BTreeSet<&str> =
            tensors.iter().filter_map(|(n, _)| n.strip_prefix("blocks.")?.split_once('.').map(|(i, _)| i)).collect();
        let heads = tensors.iter().find(|(n, _)| n.ends_with("sa.scale_mul_1H11")).map(|(_, t)| match t.shape[..] {
            [1, 1, h, 1] => h,
            _ => t.shape.get(1).copied().unwrap_or(0),
        });
        let kind = match (has("class_emb.weight"), has("cfg_uncond")) {
            (true, false) => Some("class"),
            (false, true) => Some("text"),
            _ => None,
        };
        FileModel { shape: width.map(|w| (w, if chunks > 1 { depth } else { blocks.len() })), heads, kind }
    }

    /// The lines that say how this file's model differs from `cfg` (none where nothing said differs).
    fn differences(&self, cfg: &ModelConfig) -> String {
        let mut said = match self.shape {
            Some((w, d)) if (w, d) != (cfg.embed_dim, cfg.depth) => format!(
                "\n  (the file's model has width {w} and depth {d}; this one width {} and depth {})",
                cfg.embed_dim, cfg.depth
            ),
            _ => String::new(),
        };
        if let Some(h) = self.heads.filter(|&h| h != cfg.num_heads) {
            said.push_str(&format!("\n  (the file's model has {h} heads; this one {})", cfg.num_heads));
        }
        let kind = if cfg.has_cross_attention() { "text" } else { "class" };
        if let Some(file_kind) = self.kind.filter(|k| *k != kind) {
            said.push_str(&format!("\n  (the file's model is {file_kind}-conditioned; this one {kind}-conditioned)"));
        }
        said
    }
}

/// The error listing a file's `problems` (the first 20), all of them non-finite values or not.
fn mismatch_error(path: &Path, problems: &[String], all_not_finite: bool, differences: &str) -> anyhow::Error {
    let shown: Vec<_> = problems.iter().take(20).cloned().collect();
    let more = if problems.len() > 20 { format!("\n  … and {} more", problems.len() - 20) } else { String::new() };
    let what = match all_not_finite {
        true => "holds values that are not finite (a diverged run's?)",
        false => "does not match the model config",
    };
    let count = crate::cli::plural(problems.len(), "problem");
    anyhow::anyhow!("{}: {what} ({count}):\n  {}{more}{differences}", path.display(), shown.join("\n  "))
}

/// Whether a file's tensor of `shape` holds parameter `canon` (of shape `want`) value for value: the same
/// shape, or the heads' scales as upstream registers them with `customized_flash_attn`, (1, 1, H, 1)
/// for (1, H, 1, 1) (its issue #117).
fn layout_fits(canon: &str, shape: &[usize], want: &[usize]) -> bool {
    shape == want || (canon.ends_with("scale_mul_1H11") && shape == [1, 1, want[1], 1])
}

/// The flat parameters `at..at + data.len()`, which a file's tensors are copied into.
struct Window<'a> {
    data: &'a mut [f32],
    at: usize,
}

impl<'a> Window<'a> {
    fn whole(p: &'a mut Params<f32>) -> Window<'a> {
        Window { data: &mut p.data, at: 0 }
    }

    /// `values`, those of the parameters from `offset` on: the part inside the window.
    fn put(&mut self, offset: usize, values: &[f32]) {
        let (lo, hi) = (offset.max(self.at), (offset + values.len()).min(self.at + self.data.len()));
        if lo < hi {
            self.data[lo - self.at..hi - self.at].copy_from_slice(&values[lo - offset..hi - offset]);
        }
    }
}

/// Copy `path`'s tensors (`which` state dict) into `p` by name; a problem with a parameter `lenient`
/// accepts becomes a note (the parameter keeps `p`'s value), every other problem is listed in one
/// error.
fn fill_weights(
    path: &Path,
    which: StateDict,
    cfg: &ModelConfig,
    lay: &Layout,
    mut p: Window,
    lenient: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    // one file, or the files an index names (each tensor taken from the file it maps it to)
    let parts: Vec<(PathBuf, Option<BTreeSet<String>>)> = match weight_shards::is_index(path) {
        true => weight_shards::shard_files(path)?.into_iter().map(|(f, names)| (f, Some(names))).collect(),
        false => vec![(path.to_path_buf(), None)],
    };
    let maps = parts.iter().map(|(f, _)| map_file(f)).collect::<Result<Vec<_>>>()?;
    let files =
        maps.iter().zip(&parts).map(|(b, (f, _))| WeightsFile::read(b, f, which)).collect::<Result<Vec<_>>>()?;
    let mut seen: HashMap<&str, bool> = lay.specs.iter().map(|s| (s.name.as_str(), false)).collect();
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    // (the empty name is never lenient)
    let mut report = |canon: &str, what: String| if lenient(canon) { notes.push(what) } else { problems.push(what) };
    // in the model's parameter order (unknown names last, by name): the same error every time, and
    // the first problems shown are the model's first parameters (a safetensors header has no order)
    // (each tensor's own file, for the errors about its values)
    let mut tensors = Vec::new();
    let mut from: HashMap<String, &Path> = HashMap::new();
    for (file, (f, names)) in files.iter().zip(&parts) {
        let held = file.tensors();
        if let Some(names) = names {
            let have: BTreeSet<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
            if let Some(lacking) = names.iter().find(|n| !have.contains(n.as_str())) {
                bail!("{}: maps `{lacking}` to {}, which lacks it", path.display(), f.display());
            }
            if let Some((extra, _)) = held.iter().find(|(n, _)| !names.contains(n)) {
                bail!("{}: {} holds `{extra}`, which the index does not map to it", path.display(), f.display());
            }
        }
        for (name, t) in held {
            from.insert(name.clone(), f);
            tensors.push((name, t));
        }
    }
    // a wrapped module's state dict (DDP's `module.`, torch.compile's `_orig_mod.`): its keys are read
    // without the wrapper's prefix, as the bare module loads them
    let wrapper = wrapper_prefix(tensors.iter().map(|(n, _)| n.as_str()));
    if !wrapper.is_empty() {
        tracing::info!("{}: every key starts with `{wrapper}` (a wrapped module's): read without it", path.display());
        tensors.iter_mut().for_each(|(name, _)| *name = name[wrapper.len()..].to_string());
        from = from.into_iter().map(|(name, f)| (name[wrapper.len()..].to_string(), f)).collect();
    }
    let file_of = |name: &str| from.get(name).copied().unwrap_or(path).display().to_string();
    // the file's own block layout (a chunked file of any chunk count loads into any model of its depth)
    let chunks = match file_block_chunks(tensors.iter().map(|(n, _)| n.as_str())) {
        None => 1,
        Some((chunks, per)) if chunks * per == cfg.depth => chunks,
        Some((chunks, per)) => bail!(
            "{}: its keys name {} of {} ({} blocks), the model has depth {}",
            path.display(),
            crate::cli::plural(chunks, "block chunk"),
            crate::cli::plural(per, "block"),
            chunks * per,
            cfg.depth
        ),
    };
    tensors.retain(|(name, _)| !LEGACY_BUFFERS.contains(&name.as_str()));
    let file_model = FileModel::of(&tensors, chunks, cfg.depth);
    let mut not_finite_tensors = 0;
    let order = |name: &str| {
        let offset = canonical_name(name, cfg.depth, chunks).and_then(|c| lay.spec(&c).map(|s| s.offset));
        (offset.unwrap_or(usize::MAX), name.to_string())
    };
    tensors.sort_by_cached_key(|(name, _)| order(name));
    let (held, first_names) =
        (tensors.len(), tensors.iter().take(3).map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>());
    for (name, t) in tensors {
        let Some(canon) = canonical_name(&name, cfg.depth, chunks) else {
            report("", format!("`{name}`: malformed block key"));
            continue;
        };
        if canon.ends_with("zero_k_bias") {
            let v = t.values(&name).with_context(|| file_of(&name))?;
            if v.iter().any(|&x| x != 0.0) {
                report("", format!("`{name}`: buffer must be all zeros"));
            }
            continue;
        }
        let Some(spec) = lay.spec(&canon) else {
            report(&canon, format!("`{name}`: not a parameter of this model"));
            continue;
        };
        seen.insert(spec.name.as_str(), true);
        match spec {
            // upstream's load_state_dict: the file's rows of the unconditional text embedding, cut to
            // this model's text_maxlen (always: the rows kept are those a caption of the model reads) or
            // completed by its fresh rows (where `lenient`: `p` holds a fresh initialisation)
            spec if canon == "cfg_uncond"
                && (lenient(&canon) || t.shape.first().is_some_and(|&rows| rows > spec.shape[0]))
                && t.shape.len() == 2
                && t.shape[1] == spec.shape[1]
                && t.shape[0] != spec.shape[0] =>
            {
                let v = t.values(&name).with_context(|| file_of(&name))?;
                if let Some(why) = not_finite(&name, &v) {
                    not_finite_tensors += 1;
                    report("", why);
                    continue;
                }
                let n = v.len().min(spec.numel());
                p.put(spec.offset, &v[..n]);
                let (rows, kept) = (t.shape[0], spec.shape[0]);
                let what = match rows > kept {
                    true => format!("`{name}`: the file's first {kept} of {rows} rows (text_maxlen {kept})"),
                    false => {
                        format!(
                            "`{name}`: the file's {rows} rows, then {} fresh ones (text_maxlen {kept})",
                            kept - rows
                        )
                    }
                };
                match lenient(&canon) {
                    true => report(&canon, what),
                    // (a model of the dataset's text length, as upstream's load_state_dict cuts it)
                    false => tracing::warn!("{}: {what}, as upstream's load_state_dict cuts it", path.display()),
                }
            }
            spec if !layout_fits(&canon, &t.shape, &spec.shape) => {
                report(&canon, format!("`{name}`: shape {:?}, the model expects {:?}", t.shape, spec.shape))
            }
            spec => {
                let v = t.values(&name).with_context(|| file_of(&name))?;
                match not_finite(&name, &v) {
                    None => p.put(spec.offset, &v),
                    Some(why) => {
                        not_finite_tensors += 1;
                        report("", why)
                    }
                }
            }
        }
    }
    if held > 0 && !seen.values().any(|&v| v) {
        // (a tokenizer's file, sampled bits, another model's weights: a list of every parameter says less)
        bail!(
            "{}: none of its {held} tensors is a parameter of this model ({}…): not Infinity weights under \
             upstream's names",
            path.display(),
            first_names.join(", ")
        );
    }
    for s in lay.specs.iter().filter(|s| !seen[s.name.as_str()]) {
        // named as the file's keys are (`block_chunks.C.module.J.…` in a chunked file)
        let name = chunked_name(&s.name, cfg.depth, chunks);
        report(&s.name, format!("`{name}`: missing (shape {:?})", s.shape));
    }
    if !problems.is_empty() {
        let all_not_finite = not_finite_tensors == problems.len();
        return Err(mismatch_error(path, &problems, all_not_finite, &file_model.differences(cfg)));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{init_params, InitConfig};
    use crate::model::Conditioning;
    use safetensors::SafeTensors;

    fn model(d: usize, conditioning: Conditioning, depth: usize) -> (ModelConfig, Layout, Params<f32>) {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        (cfg.d, cfg.conditioning, cfg.depth) = (d, conditioning, depth);
        let lay = Layout::new(&cfg);
        let p = init_params(&cfg, &lay, &InitConfig::default(), (d * 100 + depth) as u64);
        (cfg, lay, p)
    }

    /// The f32 file of `p`, its blocks in `chunks` chunks.
    fn weights_bytes(cfg: &ModelConfig, lay: &Layout, p: &Params<f32>, chunks: usize) -> Vec<u8> {
        safetensors::serialize(weight_tensors(cfg, lay, p, SaveDtype::F32, chunks).unwrap(), None).unwrap()
    }

    fn save(dir: &Path, cfg: &ModelConfig, lay: &Layout, p: &Params<f32>) -> std::path::PathBuf {
        let file = dir.join(format!("d{}-depth{}.safetensors", cfg.d, cfg.depth));
        std::fs::write(&file, weights_bytes(cfg, lay, p, 1)).unwrap();
        file
    }

    /// A part of a file's weights (a ZeRO-1 shard of a moving average) is the same part of the whole,
    /// across tensor boundaries, and the whole file is checked.
    #[test]
    fn a_part_of_the_weights_is_that_part_of_the_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, lay, p) = model(16, Conditioning::Class { num_classes: 10 }, 2);
        let file = save(tmp.path(), &cfg, &lay, &p);
        for range in [0..lay.numel, 5..700, lay.numel - 3..lay.numel, 9..9] {
            assert_eq!(load_weights_part(&file, &cfg, &lay, range.clone()).unwrap(), p.data[range]);
        }
        let (other, other_lay, _) = model(32, Conditioning::Class { num_classes: 10 }, 2);
        assert!(load_weights_part(&file, &other, &other_lay, 0..10).is_err());
    }

    /// A class model's file loaded as a text model's is said to be of the other kind (its key lists
    /// alone do not say why), and a file of f64 values loads as f32.
    #[test]
    fn a_file_of_the_other_conditioning_is_named_and_f64_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let (class_cfg, class_lay, p) = model(16, Conditioning::Class { num_classes: 10 }, 2);
        let file = save(tmp.path(), &class_cfg, &class_lay, &p);
        let (text, text_lay, _) = model(16, Conditioning::Text, 2);
        let e = format!("{:#}", load_weights(&file, &text, &text_lay).unwrap_err());
        assert!(e.contains("(the file's model is class-conditioned; this one text-conditioned)"), "{e}");
        // a file of another width and depth, or another count of heads, is said to be so
        let (mut other, _, _) = model(16, Conditioning::Class { num_classes: 10 }, 3);
        other.embed_dim *= 2;
        let e = format!("{:#}", load_weights(&file, &other, &Layout::new(&other)).unwrap_err());
        let (w, d) = (class_cfg.embed_dim, class_cfg.depth);
        let said = format!("(the file's model has width {w} and depth {d}; this one width {} and depth 3)", 2 * w);
        assert!(e.contains("does not match the model config") && e.contains(&said), "{e}");
        let (mut heads, _, _) = model(16, Conditioning::Class { num_classes: 10 }, 2);
        heads.num_heads *= 2;
        let e = format!("{:#}", load_weights(&file, &heads, &Layout::new(&heads)).unwrap_err());
        let said = format!("(the file's model has {} heads; this one {})", class_cfg.num_heads, heads.num_heads);
        assert!(e.contains(&said) && !e.contains("width"), "{e}");

        let f64_bytes: Vec<Vec<u8>> = class_lay
            .specs
            .iter()
            .map(|s| p.get(&class_lay, &s.name).iter().flat_map(|&v| (v as f64).to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = class_lay
            .specs
            .iter()
            .zip(&f64_bytes)
            .map(|(s, b)| {
                (s.name.clone(), safetensors::tensor::TensorView::new(Dtype::F64, s.shape.clone(), b).unwrap())
            })
            .collect();
        let wide = tmp.path().join("f64.safetensors");
        std::fs::write(&wide, safetensors::serialize(views, None).unwrap()).unwrap();
        assert_eq!(load_weights(&wide, &class_cfg, &class_lay).unwrap().data, p.data);
    }

    /// A text model with 32 bits per token starts from a class model with 16: the transformer body
    /// comes from the file, the layers tied to the bits and the conditioning keep their fresh values.
    #[test]
    fn init_from_takes_the_body_and_keeps_the_bits_and_condition_layers_fresh() {
        let tmp = tempfile::tempdir().unwrap();
        let (src_cfg, src_lay, src) = model(16, Conditioning::Class { num_classes: 10 }, 2);
        let file = save(tmp.path(), &src_cfg, &src_lay, &src);
        let (cfg, lay, fresh) = model(32, Conditioning::Text, 2);
        let mut p = fresh.clone();
        let notes = init_from_weights(&file, StateDict::Weights, &cfg, &lay, &mut p).unwrap();
        for s in &lay.specs {
            let (got, new) = (p.get(&lay, &s.name), fresh.get(&lay, &s.name));
            if reinitialisable(&s.name) {
                assert_eq!(got, new, "{} should keep its fresh values", s.name);
            } else {
                assert_eq!(got, src.get(&src_lay, &s.name), "{} should come from the file", s.name);
            }
        }
        let said = |what: &str| notes.iter().any(|n| n.contains(what));
        assert!(said("`word_embed.weight`: shape [64, 16], the model expects [64, 32]"), "{notes:#?}");
        assert!(said("`class_emb.weight`: not a parameter") && said("`blocks.1.ca.mat_q.weight`: missing"));
        assert!(said("`text_norm.weight`: missing") && said("`head.bias`: shape [32]"), "{notes:#?}");

        // a load for sampling or resuming takes no such liberties
        let e = format!("{:#}", load_weights(&file, &cfg, &lay).unwrap_err());
        assert!(e.contains("word_embed.weight") && e.contains("problems"), "{e}");
    }

    /// The body must match: another depth is an error naming the blocks that do not fit.
    #[test]
    fn init_from_refuses_another_body() {
        let tmp = tempfile::tempdir().unwrap();
        let (src_cfg, src_lay, src) = model(16, Conditioning::Class { num_classes: 10 }, 3);
        let file = save(tmp.path(), &src_cfg, &src_lay, &src);
        let (cfg, lay, mut p) = model(16, Conditioning::Class { num_classes: 10 }, 2);
        let e = format!("{:#}", init_from_weights(&file, StateDict::Weights, &cfg, &lay, &mut p).unwrap_err());
        assert!(e.contains("`blocks.2.ffn.fc1.weight`: not a parameter of this model"), "{e}");
        assert!(!e.contains("word_embed"), "{e}");
    }

    /// A file of `tensors` (f32) beside `dir`.
    fn write_tensors(dir: &Path, name: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> std::path::PathBuf {
        let views: Vec<(String, Lazy)> =
            tensors.iter().map(|t| (t.0.clone(), Lazy { values: Values::F32(&t.2), shape: t.1.clone() })).collect();
        let file = dir.join(name);
        std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
        file
    }

    /// The file's keys say how its blocks are chunked: a file of 2 chunks loads into a model of 1 or 4
    /// (what upstream's `Infinity(block_chunks=…)` and our exports write), upstream's legacy buffers are
    /// dropped as its `load_state_dict` drops them, and `model.init_from` cuts or completes a
    /// `cfg_uncond` of another text_maxlen as upstream does (a load for sampling only cuts).
    #[test]
    fn loading_follows_the_files_block_chunks_and_upstreams_load_state_dict() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut cfg, lay, src) = model(16, Conditioning::Text, 4);
        let chunked = weights_bytes(&cfg, &lay, &src, 2);
        let st = SafeTensors::deserialize(&chunked).unwrap();
        assert!(st.names().iter().any(|n| n.starts_with("block_chunks.1.module.1.")));
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec(), tensor_f32(&n, t.dtype(), t.data()).unwrap()))
            .collect();
        tensors.push(("attn_bias_for_masking".into(), vec![1, 1, 4, 4], vec![0.0; 16]));
        tensors.push(("lvl_1L".into(), vec![1, 4], vec![1.0; 4]));
        let file = write_tensors(tmp.path(), "chunked.safetensors", &tensors);
        for chunks in [1, 4] {
            cfg.block_chunks = chunks;
            assert_eq!(load_weights(&file, &cfg, &lay).unwrap().data, src.data, "into block_chunks {chunks}");
        }
        let (three, _, _) = model(16, Conditioning::Text, 3);
        let e = format!("{:#}", load_weights(&file, &three, &Layout::new(&three)).unwrap_err());
        assert!(e.contains("name 2 block chunks of 2 blocks (4 blocks), the model has depth 3"), "{e}");

        // cfg_uncond [text_maxlen 16, Ct]: a file of 20 rows gives its first 16; one of 8 its 8 and 8 fresh
        let spec = lay.spec("cfg_uncond").unwrap().clone();
        let ct = spec.shape[1];
        for rows in [20, 8] {
            let file_rows: Vec<f32> = (0..rows * ct).map(|i| i as f32).collect();
            let mut t = tensors.clone();
            let entry = t.iter_mut().find(|t| t.0 == "cfg_uncond").unwrap();
            (entry.1, entry.2) = (vec![rows, ct], file_rows.clone());
            let file = write_tensors(tmp.path(), &format!("rows{rows}.safetensors"), &t);
            let fresh = init_params(&cfg, &lay, &InitConfig::default(), 9);
            let mut p = fresh.clone();
            let notes = init_from_weights(&file, StateDict::Weights, &cfg, &lay, &mut p).unwrap();
            let got = p.get(&lay, "cfg_uncond");
            let n = rows.min(16) * ct;
            assert_eq!(&got[..n], &file_rows[..n], "{rows} rows");
            assert_eq!(&got[n..], &fresh.get(&lay, "cfg_uncond")[n..], "{rows} rows: the rest stays fresh");
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert!(
                notes[0].contains(&format!(
                    "`cfg_uncond`: the file's {}",
                    if rows > 16 { "first 16 of 20" } else { "8 rows, then 8 fresh" }
                )),
                "{notes:?}"
            );
            // a load for sampling cuts more rows as upstream does, but has no fresh rows to complete fewer
            match rows > 16 {
                true => assert_eq!(load_weights(&file, &cfg, &lay).unwrap().get(&lay, "cfg_uncond"), &file_rows[..n]),
                false => assert!(format!("{:#}", load_weights(&file, &cfg, &lay).unwrap_err()).contains("cfg_uncond")),
            }
            // rows of another count are finite too, or refused (a diverged run's NaN trained on)
            let entry = t.iter_mut().find(|t| t.0 == "cfg_uncond").unwrap();
            entry.2[ct + 1] = f32::NAN;
            let file = write_tensors(tmp.path(), &format!("rows{rows}-nan.safetensors"), &t);
            let e = format!("{:#}", init_from_weights(&file, StateDict::Weights, &cfg, &lay, &mut p).unwrap_err());
            assert!(e.contains(&format!("`cfg_uncond`: 1 of {} values not finite", rows * ct)), "{e}");
        }
    }

    /// A diverged run's weights are refused naming the tensor (`model.init_from` trained NaN from them,
    /// exit 0), and a chunked file's missing tensor is named as its keys are (it was `blocks.N.…`).
    #[test]
    fn non_finite_and_missing_tensors_are_named_as_the_file_has_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, lay, src) = model(16, Conditioning::Text, 4);
        let st_bytes = weights_bytes(&cfg, &lay, &src, 2);
        let st = SafeTensors::deserialize(&st_bytes).unwrap();
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec(), tensor_f32(&n, t.dtype(), t.data()).unwrap()))
            .collect();
        let mut nan = tensors.clone();
        let head = nan.iter_mut().find(|t| t.0 == "head.weight").unwrap();
        (head.2[3], head.2[5]) = (f32::NAN, f32::INFINITY);
        let file = write_tensors(tmp.path(), "nan.safetensors", &nan);
        let mut p = init_params(&cfg, &lay, &InitConfig::default(), 1);
        for e in [
            init_from_weights(&file, StateDict::Weights, &cfg, &lay, &mut p).unwrap_err(),
            load_weights(&file, &cfg, &lay).unwrap_err(),
        ] {
            let e = format!("{e:#}");
            assert!(e.contains("(1 problem):") && e.contains("`head.weight`: 2 of ") && e.contains("NaN at 3"), "{e}");
            assert!(e.contains("nan.safetensors: holds values that are not finite"), "{e}");
        }
        // a wrapped module's state dict (DDP's `module.`, then torch.compile's `_orig_mod.`) loads as
        // the bare module's
        let wrapped: Vec<_> =
            tensors.iter().map(|(n, s, v)| (format!("_orig_mod.module.{n}"), s.clone(), v.clone())).collect();
        let file = write_tensors(tmp.path(), "wrapped.safetensors", &wrapped);
        assert_eq!(load_weights(&file, &cfg, &lay).unwrap().data, src.data);
        // a file cut short is named as such
        let whole = write_tensors(tmp.path(), "whole.safetensors", &tensors);
        let bytes = std::fs::read(&whole).unwrap();
        let cut = tmp.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let e = format!("{:#}", load_weights(&cut, &cfg, &lay).unwrap_err());
        let want = format!("an incomplete safetensors file: its tensors end at byte {}", bytes.len());
        assert!(e.contains(&want) && e.contains(&format!("the file has {} bytes", bytes.len() - 100)), "{e}");
        std::fs::write(&cut, &bytes[..20]).unwrap();
        let e = format!("{:#}", load_weights(&cut, &cfg, &lay).unwrap_err());
        assert!(e.contains("an incomplete safetensors file: its header of") && e.contains("(20 bytes)"), "{e}");
        // another width: the file's model is said after the list
        let mut wide = cfg.clone();
        (wide.embed_dim, wide.num_heads) = (2 * cfg.embed_dim, 2 * cfg.num_heads);
        let e = format!("{:#}", load_weights(&whole, &wide, &Layout::new(&wide)).unwrap_err());
        let (w, d, w2) = (cfg.embed_dim, cfg.depth, wide.embed_dim);
        let want = format!("(the file's model has width {w} and depth {d}; this one width {w2} and depth {d})");
        assert!(e.contains("does not match the model config") && e.contains(&want), "{e}");
        // other heads alone: only the heads' scales differ, and the heads are said
        let mut heads = cfg.clone();
        heads.num_heads = 2 * cfg.num_heads;
        let e = format!("{:#}", load_weights(&whole, &heads, &Layout::new(&heads)).unwrap_err());
        let want = format!("(the file's model has {} heads; this one {})", cfg.num_heads, heads.num_heads);
        assert!(e.contains("scale_mul_1H11") && e.contains(&want) && !e.contains("width"), "{e}");
        // a header whose offsets do not fit a tensor's shape names the tensor
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let first = header.as_object().unwrap().keys().find(|k| *k != "__metadata__").unwrap().clone();
        header[&first]["shape"][0] = serde_json::json!(header[&first]["shape"][0].as_u64().unwrap() + 1);
        let mut text = serde_json::to_vec(&header).unwrap();
        assert!(text.len() <= n, "the header grew");
        text.resize(n, b' ');
        let damaged = tmp.path().join("damaged.safetensors");
        std::fs::write(&damaged, [&bytes[..8], &text[..], &bytes[8 + n..]].concat()).unwrap();
        let e = format!("{:#}", load_weights(&damaged, &cfg, &lay).unwrap_err());
        assert!(e.contains("a damaged safetensors file") && e.contains(&format!("tensor `{first}`")), "{e}");
        // upstream's (1, 1, H, 1) layout of the heads' scales (its issue #117) loads as (1, H, 1, 1)
        let mut flash = tensors.clone();
        let scales = flash.iter_mut().find(|t| t.0.ends_with("sa.scale_mul_1H11")).unwrap();
        scales.1 = vec![1, 1, scales.1[1], 1];
        let file = write_tensors(tmp.path(), "flash.safetensors", &flash);
        assert_eq!(load_weights(&file, &cfg, &lay).unwrap().data, src.data);
        let fc2 = "block_chunks.1.module.1.ffn.fc2.bias";
        let short: Vec<_> = tensors.into_iter().filter(|t| t.0 != fc2).collect();
        let file = write_tensors(tmp.path(), "short.safetensors", &short);
        let e = format!("{:#}", load_weights(&file, &cfg, &lay).unwrap_err());
        assert!(e.contains(&format!("`{fc2}`: missing")), "{e}");
    }
}
