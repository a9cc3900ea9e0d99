//! Model weights as safetensors with upstream names: the format of checkpoints, exports and golden
//! folders. Loading accepts either block layout and upstream's zero buffers, and reports every name or
//! shape that does not match the model at once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::params::{canonical_name, chunked_name};
use super::{Layout, ModelConfig, Params};

/// Element type of saved weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    Bf16,
}

/// safetensors bytes of `p` (f32 or bf16) under upstream names; `chunked` uses `block_chunks.C.module.J`
/// keys (what upstream's inference loader expects for `block_chunks > 1`). `zero_k_bias` buffers are
/// included so the file loads into upstream's module with `strict=True`.
pub fn weights_bytes(
    cfg: &ModelConfig,
    lay: &Layout,
    p: &Params<f32>,
    dtype: SaveDtype,
    chunked: bool,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let name = |n: &str| if chunked { chunked_name(n, cfg.depth, cfg.block_chunks) } else { n.to_string() };
    let encode = |v: &[f32]| -> Vec<u8> {
        match dtype {
            SaveDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            SaveDtype::Bf16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        }
    };
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for s in &lay.specs {
        tensors.insert(name(&s.name), (s.shape.clone(), encode(&p.data[s.offset..s.offset + s.numel()])));
    }
    let c = cfg.embed_dim;
    let mut buffers = vec!["text_proj_for_sos.ca.zero_k_bias".to_string()];
    for n in 0..cfg.depth {
        buffers.push(format!("blocks.{n}.sa.zero_k_bias"));
        buffers.push(format!("blocks.{n}.ca.zero_k_bias"));
    }
    for b in buffers.into_iter().filter(|b| lay.spec(&b.replace("zero_k_bias", "v_bias")).is_some()) {
        tensors.insert(name(&b), (vec![c], encode(&vec![0.0; c])));
    }
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (shape, data))| Ok((n.clone(), TensorView::new(st_dtype, shape.clone(), data)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

/// Values of a safetensors tensor (f32, bf16 or f16) as f32.
pub fn tensor_f32(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => bail!("tensor `{name}`: expected f32, bf16 or f16, found {other:?}"),
    })
}

/// Load upstream-named weights (either block layout; `*.zero_k_bias` must be zero). Every unknown
/// name, shape mismatch and missing parameter is listed in one error.
pub fn load_weights(path: &Path, cfg: &ModelConfig, lay: &Layout) -> Result<Params<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let mut p = Params::zeros(lay);
    let mut seen: HashMap<&str, bool> = lay.specs.iter().map(|s| (s.name.as_str(), false)).collect();
    let mut problems = Vec::new();
    // in the model's parameter order (unknown names last, by name): the same error every time, and
    // the first problems shown are the model's first parameters (a safetensors header has no order)
    let mut tensors = st.tensors();
    let order = |name: &str| {
        let offset = canonical_name(name, cfg.depth, cfg.block_chunks).and_then(|c| lay.spec(&c).map(|s| s.offset));
        (offset.unwrap_or(usize::MAX), name.to_string())
    };
    tensors.sort_by_cached_key(|(name, _)| order(name));
    for (name, t) in tensors {
        let Some(canon) = canonical_name(&name, cfg.depth, cfg.block_chunks) else {
            problems.push(format!("`{name}`: malformed block key"));
            continue;
        };
        let v = tensor_f32(&name, t.dtype(), t.data()).with_context(|| path.display().to_string())?;
        if canon.ends_with("zero_k_bias") {
            if v.iter().any(|&x| x != 0.0) {
                problems.push(format!("`{name}`: buffer must be all zeros"));
            }
            continue;
        }
        match lay.spec(&canon) {
            None => problems.push(format!("`{name}`: not a parameter of this model")),
            Some(spec) if t.shape() != spec.shape.as_slice() => {
                problems.push(format!("`{name}`: shape {:?}, the model expects {:?}", t.shape(), spec.shape))
            }
            Some(spec) => {
                p.data[spec.offset..spec.offset + spec.numel()].copy_from_slice(&v);
                seen.insert(spec.name.as_str(), true);
            }
        }
    }
    problems.extend(
        lay.specs
            .iter()
            .filter(|s| !seen[s.name.as_str()])
            .map(|s| format!("`{}`: missing (shape {:?})", s.name, s.shape)),
    );
    if !problems.is_empty() {
        let shown: Vec<_> = problems.iter().take(20).cloned().collect();
        let more =
            if problems.len() > 20 { format!("\n  … and {} more", problems.len() - 20) } else { String::new() };
        bail!(
            "{}: does not match the model config ({} problems):\n  {}{more}",
            path.display(),
            problems.len(),
            shown.join("\n  ")
        );
    }
    Ok(p)
}
