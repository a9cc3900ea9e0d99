//! A weights file as `model.init_from`, checkpoints and exports are read: safetensors, or PyTorch's
//! `torch.save` format ([`torch_file`]), mapped in memory; each tensor's values decoded to f32 when
//! asked. Files cut short and PyTorch's format from before torch 1.6 are named as such.

use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use super::io::tensor_f32;
use super::torch_file::{self, StateDict};

/// A weights file, mapped: safetensors, or a PyTorch checkpoint (`torch.save`'s zip format: upstream's
/// released `.pth` weights and its training checkpoints, read without PyTorch by [`torch_file`]).
pub(super) enum WeightsFile<'a> {
    Safetensors(SafeTensors<'a>),
    Torch(torch_file::TorchWeights, &'a [u8]),
}

/// Where `bytes` read as a safetensors file end before its header says they do (a copy cut short):
/// what is missing, in words; `None` for anything else.
fn safetensors_cut_short(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header_end = 8u64.checked_add(n)?;
    if header_end > bytes.len() as u64 {
        // (a header of gigabytes is no safetensors file at all)
        return (n < 100 << 20 && bytes.get(8) == Some(&b'{'))
            .then(|| format!("its header of {n} bytes runs past the file's end ({} bytes)", bytes.len()));
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..header_end as usize]).ok()?;
    let data_end = header
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t["data_offsets"][1].as_u64())
        .max()?;
    let want = header_end.checked_add(data_end)?;
    (want > bytes.len() as u64).then(|| format!("its tensors end at byte {want}, the file has {} bytes", bytes.len()))
}

/// Where a safetensors file whose header reads is damaged (the reader's own error names no tensor for a
/// size that does not fit its shape and dtype): the first such tensor, or `None`.
fn damaged_safetensors(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?).ok()?;
    header.into_iter().filter(|(k, _)| k != "__metadata__").find_map(|(name, t)| {
        let info: safetensors::tensor::TensorInfo = serde_json::from_value(t).ok()?;
        let bits = info.shape.iter().try_fold(info.dtype.bitsize(), |n, &d| n.checked_mul(d))?;
        let ((start, end), size) = (info.data_offsets, bits.div_ceil(8));
        (end.checked_sub(start) != Some(size)).then(|| {
            let (dtype, shape) = (info.dtype, &info.shape);
            format!("tensor `{name}` (\"{dtype}\" {shape:?}, {size} bytes) has data_offsets [{start}, {end}]")
        })
    })
}

/// A tensor of a [`WeightsFile`]: its shape, and its values read on demand.
pub(super) struct FileTensor<'a> {
    pub(super) shape: Vec<usize>,
    data: FileData<'a>,
}

enum FileData<'a> {
    Safetensors(Dtype, &'a [u8]),
    Torch(&'a torch_file::TorchTensor, &'a [u8]),
}

impl<'a> WeightsFile<'a> {
    /// `bytes` (the file `path`) as the format its first bytes say; `which` of a training checkpoint's
    /// state dicts.
    pub(super) fn read(bytes: &'a [u8], path: &Path, which: StateDict) -> Result<WeightsFile<'a>> {
        if torch_file::is_zip(bytes) {
            let weights = torch_file::read_weights(bytes, path, which)?;
            tracing::info!("{}: PyTorch weights at {}", path.display(), weights.found_at);
            return Ok(WeightsFile::Torch(weights, bytes));
        }
        if torch_file::is_legacy(bytes) {
            bail!(
                "{}: a PyTorch file in the format before torch 1.6 (or saved with \
                 _use_new_zipfile_serialization=False), which this reader does not take: save it again with \
                 torch >= 1.6: python -c \"import torch; torch.save(torch.load('{}', map_location='cpu', \
                 weights_only=False), 'resaved.pth')\"",
                path.display(),
                path.display()
            );
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| match safetensors_cut_short(bytes) {
            Some(why) => anyhow::anyhow!("{}: an incomplete safetensors file: {why} (copy it again)", path.display()),
            None => match damaged_safetensors(bytes) {
                Some(why) => anyhow::anyhow!("{}: a damaged safetensors file ({e}): {why}", path.display()),
                None => anyhow::anyhow!(
                    "{}: not a safetensors file ({e}), nor a PyTorch checkpoint (a zip file)",
                    path.display()
                ),
            },
        })?;
        if which == StateDict::MovingAverage {
            bail!(
                "{}: a safetensors file holds one set of weights, taken as it is: leave model.init_from_ema out \
                 to start from them, or give the checkpoint, run or export folder whose moving average to take",
                path.display()
            );
        }
        Ok(WeightsFile::Safetensors(st))
    }

    /// Every tensor, by name.
    pub(super) fn tensors(&self) -> Vec<(String, FileTensor<'_>)> {
        match self {
            WeightsFile::Safetensors(st) => st
                .tensors()
                .into_iter()
                .map(|(n, t)| {
                    (n, FileTensor { shape: t.shape().to_vec(), data: FileData::Safetensors(t.dtype(), t.data()) })
                })
                .collect(),
            WeightsFile::Torch(w, bytes) => w
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), FileTensor { shape: t.shape.clone(), data: FileData::Torch(t, bytes) }))
                .collect(),
        }
    }
}

impl FileTensor<'_> {
    /// The values as f32 (f32, bf16 or f16 in safetensors; those and f64 in PyTorch's files).
    pub(super) fn values(&self, name: &str) -> Result<Vec<f32>> {
        match self.data {
            FileData::Safetensors(dtype, data) => tensor_f32(name, dtype, data),
            FileData::Torch(t, bytes) => t.values(bytes).with_context(|| format!("tensor `{name}`")),
        }
    }
}
