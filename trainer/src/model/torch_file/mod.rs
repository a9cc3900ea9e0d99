//! PyTorch checkpoints read without PyTorch: the zip format of `torch.save` (PyTorch ≥ 1.6), as
//! upstream's released weights (`infinity_2b_reg.pth`) and its training checkpoints
//! (`ar-ckpt*.pth`, the weights under `trainer.gpt_fsdp`) come.
//!
//! The file's `ARCHIVE/data.pkl` is a pickle whose tensors point at storages `ARCHIVE/data/KEY`
//! (stored, uncompressed). The pickle is read by a small stack machine that builds plain values and
//! never runs code: `collections.OrderedDict` and torch's tensor rebuilders are understood, any other
//! class or call (an argparse namespace, a numpy scalar) becomes an opaque value. Tensors are views
//! (offset, shape, strides) into their storage, decoded to f32 when read.

mod pickle;

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Context, Result};

use self::pickle::{describe, unpickle, Value};

/// Where upstream's training checkpoints keep the trained weights under `trainer` (FSDP's, DDP's), and
/// their moving average.
const TRAINED_KEYS: [&str; 2] = ["gpt_fsdp", "gpt_wo_ddp"];
const EMA_KEY: &str = "gpt_ema_fsdp";

/// Whether `bytes` start as `torch.save` wrote files before torch 1.6 (a pickle opening with torch's
/// magic number), a format this reader does not take.
pub fn is_legacy(bytes: &[u8]) -> bool {
    // protocol 2, then the magic number 0x1950a86a20f9469cfc6c as a 10-byte LONG1
    bytes.starts_with(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")
}

/// Whether `bytes` start like a zip file (PyTorch's format) rather than a safetensors header.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Element type of a storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDtype {
    F32,
    F16,
    Bf16,
    F64,
    /// A storage of another type (integers, bools): not weights.
    Other,
}

impl TorchDtype {
    fn of_storage(class: &str) -> (TorchDtype, usize) {
        match class {
            "FloatStorage" => (TorchDtype::F32, 4),
            "HalfStorage" => (TorchDtype::F16, 2),
            "BFloat16Storage" => (TorchDtype::Bf16, 2),
            "DoubleStorage" => (TorchDtype::F64, 8),
            "LongStorage" => (TorchDtype::Other, 8),
            "IntStorage" => (TorchDtype::Other, 4),
            "ShortStorage" => (TorchDtype::Other, 2),
            _ => (TorchDtype::Other, 1),
        }
    }
}

/// A storage named by the pickle: its element type and size, and its file `data/KEY`.
#[derive(Clone, Debug)]
struct Storage {
    class: String,
    dtype: TorchDtype,
    elem: usize,
    key: String,
    numel: usize,
}

/// A tensor: a strided view of its storage's bytes in the file.
#[derive(Clone, Debug)]
pub struct TorchTensor {
    pub shape: Vec<usize>,
    pub dtype: TorchDtype,
    storage: Rc<Storage>,
    /// Where the storage's bytes lie in the file (set once the archive is read).
    bytes: Range<usize>,
    offset: usize,
    stride: Vec<usize>,
}

impl TorchTensor {
    /// The values as f32, row-major (`file` is the whole `.pth` file). A view must lie inside its
    /// storage and hold no more elements than it, so a crafted one cannot make a huge tensor of a small
    /// storage (a stride-0 view within that bound reads as torch reads it, a broadcast).
    pub fn values(&self, file: &[u8]) -> Result<Vec<f32>> {
        let s = &self.storage;
        ensure!(
            self.dtype != TorchDtype::Other,
            "a {} tensor, expected float32, float16, bfloat16 or float64",
            s.class
        );
        let numel =
            self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).context("a shape whose size overflows")?;
        if numel == 0 {
            return Ok(Vec::new());
        }
        // the furthest element the view reads, inside the storage and the storage's bytes inside the entry
        let reach = self
            .shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |at, (&n, &st)| at.checked_add((n - 1).checked_mul(st)?));
        let last = reach.context("a view whose extent overflows")?;
        ensure!(
            last < s.numel && numel <= s.numel,
            "a view of {numel} elements reaching element {last} of a storage of {} (data/{})",
            s.numel,
            s.key
        );
        let data = file.get(self.bytes.clone()).context("a storage outside the file")?;
        let need = (last + 1).checked_mul(s.elem).context("a view whose extent overflows")?;
        ensure!(need <= data.len(), "data/{} holds {} bytes, the view reads {need}", s.key, data.len());
        let decode = |b: &[u8]| -> f32 {
            match self.dtype {
                TorchDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                TorchDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                TorchDtype::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                TorchDtype::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
                TorchDtype::Other => f32::NAN,
            }
        };
        // row-major strides: one run of the storage (a state dict's tensors, nearly always)
        let mut contiguous = true;
        let mut expected = 1usize;
        for (&n, &st) in self.shape.iter().zip(&self.stride).rev() {
            contiguous &= n == 1 || st == expected;
            expected = expected.saturating_mul(n);
        }
        if contiguous {
            let run = &data[self.offset * s.elem..(self.offset + numel) * s.elem];
            return Ok(run.chunks_exact(s.elem).map(decode).collect());
        }
        let mut out = Vec::with_capacity(numel);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..numel {
            let at = self.offset + index.iter().zip(&self.stride).map(|(i, st)| i * st).sum::<usize>();
            out.push(decode(&data[at * s.elem..(at + 1) * s.elem]));
            // the next index, row-major
            for dim in (0..index.len()).rev() {
                index[dim] += 1;
                if index[dim] < self.shape[dim] {
                    break;
                }
                index[dim] = 0;
            }
        }
        Ok(out)
    }
}

/// The result of a call (`REDUCE`, `NEWOBJ`) of `callable` with `args`.
fn call(callable: &Value, args: &[Value]) -> Result<Value> {
    let Value::Global(g) = callable else { return Ok(Value::Opaque(Rc::new("a call of a value".into()))) };
    let (module, name) = (g.0.as_str(), g.1.as_str());
    Ok(match (module, name) {
        ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => Value::dict(),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [Value::Storage(storage), offset, size, stride, ..] = args else {
                let given: Vec<String> = args.iter().map(describe).collect();
                bail!("torch._utils.{name} of ({}), expected (storage, offset, size, stride, …)", given.join(", "));
            };
            let (Some(offset), Some(shape), Some(stride)) = (offset.as_usize(), size.usizes(), stride.usizes()) else {
                bail!("torch._utils.{name}: offset, size or stride not integers");
            };
            ensure!(
                shape.len() == stride.len(),
                "torch._utils.{name}: {} sizes and {} strides",
                shape.len(),
                stride.len()
            );
            let (storage, dtype) = (storage.clone(), storage.dtype);
            Value::Tensor(Rc::new(TorchTensor { shape, dtype, storage, bytes: 0..0, offset, stride }))
        }
        // a Parameter pickled as itself: its data
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            args.first().cloned().context("torch._utils._rebuild_parameter without arguments")?
        }
        // a tensor with Python attributes: `func(*args)` rebuilds it
        ("torch._tensor", "_rebuild_from_type_v2") => match args {
            [func, _class, Value::Tuple(inner), ..] => call(func, inner)?,
            _ => bail!("torch._tensor._rebuild_from_type_v2 without (func, type, args, state)"),
        },
        _ => Value::Opaque(Rc::new(format!("{module}.{name}"))),
    })
}

/// The storage a persistent id names: `('storage', torch.XStorage, key, location, numel)`.
fn storage(pid: &Value) -> Result<Value> {
    let Value::Tuple(t) = pid else { bail!("a persistent id that is {}, expected a tuple", describe(pid)) };
    match &t[..] {
        [Value::Str(kind), Value::Global(class), Value::Str(key), _, numel] if kind == "storage" => {
            let numel = numel.as_usize().context("a storage's element count is not an integer")?;
            let (dtype, elem) = TorchDtype::of_storage(&class.1);
            Ok(Value::Storage(Rc::new(Storage { class: class.1.clone(), dtype, elem, key: key.clone(), numel })))
        }
        _ => {
            let given: Vec<String> = t.iter().map(describe).collect();
            bail!("a persistent id ({}), expected ('storage', class, key, location, numel)", given.join(", "))
        }
    }
}

/// Which state dict of a weights file to read. `Weights`: the one a plain file holds (released weights,
/// a safetensors file), or a training checkpoint's trained weights (upstream's `gpt_fsdp`, or
/// `gpt_wo_ddp` under DDP). `MovingAverage`: a training checkpoint's average of them (`gpt_ema_fsdp`,
/// kept with `--use_fsdp_model_ema`); files that keep none refuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateDict {
    Weights,
    MovingAverage,
}

/// A PyTorch file's weights: `(name, tensor)` in the file's order.
pub struct TorchWeights {
    pub tensors: Vec<(String, TorchTensor)>,
    /// Where in the file's object they were (`the file's top level`, `trainer.gpt_fsdp`).
    pub found_at: String,
}

/// A `torch.save` zip archive mapped in memory: its entries' byte ranges and its pickle's object.
struct Archive<'a> {
    bytes: &'a [u8],
    path: &'a Path,
    zip: zip::ZipArchive<Cursor<&'a [u8]>>,
    /// `ARCHIVE/`, the folder every entry is in.
    prefix: String,
}

impl<'a> Archive<'a> {
    /// The archive of `bytes` (the file `path`), its byte order checked.
    fn open(bytes: &'a [u8], path: &'a Path) -> Result<Archive<'a>> {
        let named = || path.display().to_string();
        let zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
            anyhow!("{}: not a complete zip file ({e}; {} bytes): truncated? copy it again", named(), bytes.len())
        })?;
        let names: Vec<String> = zip
            .file_names()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{}: {e}", named()))?
            .into_iter()
            .map(|n| n.into_owned())
            .collect();
        let pkl = names
            .iter()
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .with_context(|| format!("{}: a zip file without ARCHIVE/data.pkl: not a PyTorch checkpoint", named()))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let mut archive = Archive { bytes, path, zip, prefix };
        if names.iter().any(|n| *n == format!("{}byteorder", archive.prefix)) {
            let r = archive.entry("byteorder")?;
            let order = String::from_utf8_lossy(&bytes[r]);
            ensure!(order == "little", "{}: byte order {order:?}, expected little", named());
        }
        Ok(archive)
    }

    /// The bytes of entry `ARCHIVE/name`, which must be stored uncompressed and lie inside the file.
    fn entry(&mut self, name: &str) -> Result<Range<usize>> {
        let (named, name) = (self.path.display(), format!("{}{name}", self.prefix));
        let f = self.zip.by_name(&name).map_err(|e| anyhow!("{named}: {name}: {e}"))?;
        ensure!(
            f.compression() == zip::CompressionMethod::Stored,
            "{named}: {name} is compressed ({:?}); torch.save stores its entries uncompressed",
            f.compression()
        );
        let start = f.data_start().with_context(|| format!("{named}: {name}: no data offset"))?;
        let (size, stored) = (f.size(), f.compressed_size());
        let end = start.checked_add(size).filter(|&end| size == stored && end <= self.bytes.len() as u64);
        let end = end.with_context(|| format!("{named}: {name}: {size} bytes at {start}, past the file's end"))?;
        // (zip keeps each entry's CRC-32: a copy damaged in transit is named, not loaded as weights; 0 is
        // what torch.save records with `torch.serialization.set_crc32_options(False)`: nothing to check)
        let range = start as usize..end as usize;
        let found = if f.crc32() == 0 { 0 } else { crc32fast::hash(&self.bytes[range.clone()]) };
        ensure!(
            found == f.crc32(),
            "{named}: {name} is damaged: its CRC-32 is {found:08x}, the zip directory records {:08x} (copy the file \
             again)",
            f.crc32()
        );
        Ok(range)
    }

    /// The object `torch.save` pickled.
    fn root(&mut self) -> Result<Value> {
        let r = self.entry("data.pkl")?;
        unpickle(&self.bytes[r]).with_context(|| format!("{}: {}data.pkl", self.path.display(), self.prefix))
    }
}

/// Whether the PyTorch file `bytes` (the file `path`) is upstream's training checkpoint keeping a
/// moving average of its weights (`trainer.gpt_ema_fsdp`).
pub fn holds_moving_average(bytes: &[u8], path: &Path) -> Result<bool> {
    let root = Archive::open(bytes, path)?.root()?;
    Ok(root.get("trainer").is_some_and(|t| t.get(EMA_KEY).is_some()))
}

/// The state dict of the PyTorch file `bytes` (`path` for errors): the file's object itself where it
/// is a dict of tensors (released weights), else `trainer.gpt_fsdp` or `trainer.gpt_wo_ddp` (upstream's
/// training checkpoints under FSDP or DDP), or `trainer.gpt_ema_fsdp` for their moving average.
pub fn read_weights(bytes: &[u8], path: &Path, which: StateDict) -> Result<TorchWeights> {
    let named = || path.display().to_string();
    let mut archive = Archive::open(bytes, path)?;
    let root = archive.root()?;
    // the state dict: tensors at the top, or where upstream's trainer keeps them
    let (dict, found_at) = match (root.get("trainer"), which) {
        (Some(trainer), StateDict::Weights) => {
            if trainer.get(EMA_KEY).is_some() {
                tracing::info!(
                    "{}: also holds the weights' moving average (model.init_from_ema, or --ema of infinity sample \
                     and export, takes it)",
                    named()
                );
            }
            TRAINED_KEYS.iter().find_map(|k| trainer.get(k).map(|d| (d, format!("trainer.{k}")))).with_context(
                || format!("{}: `trainer` holds no gpt_fsdp or gpt_wo_ddp (its keys: {:?})", named(), trainer.keys()),
            )?
        }
        (Some(trainer), StateDict::MovingAverage) => match trainer.get(EMA_KEY) {
            Some(d) => (d, format!("trainer.{EMA_KEY}")),
            None => {
                let weights = TRAINED_KEYS.iter().find(|k| trainer.get(k).is_some()).unwrap_or(&TRAINED_KEYS[0]);
                bail!(
                    "{}: `trainer` holds no {EMA_KEY} (the run kept no moving average: upstream's \
                     --use_fsdp_model_ema was 0; its keys: {:?}); leave model.init_from_ema out to take {weights}",
                    named(),
                    trainer.keys()
                )
            }
        },
        (None, StateDict::Weights) => (root.clone(), "the file's top level".to_string()),
        (None, StateDict::MovingAverage) => bail!(
            "{}: a state dict (released weights) holds one set of weights, no moving average: \
             model.init_from_ema takes upstream's training checkpoints (trainer.{EMA_KEY})",
            named()
        ),
    };
    let Value::Dict(items) = &dict else { bail!("{}: {found_at} is not a dict of tensors", named()) };
    let mut storages: HashMap<String, Range<usize>> = HashMap::new();
    let mut tensors = Vec::new();
    for (k, v) in items.borrow().iter() {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            // a tensor this reader cannot rebuild is named, not left for the model to miss
            if let (Value::Str(name), Value::Opaque(by)) = (k, v) {
                ensure!(
                    !by.starts_with("torch"),
                    "{}: `{name}` is built by {by}, which this reader does not take",
                    named()
                );
            }
            continue;
        };
        let key = format!("data/{}", t.storage.key);
        let bytes_of = match storages.get(&key) {
            Some(r) => r.clone(),
            None => {
                let r = archive.entry(&key)?;
                ensure!(
                    t.storage.numel.checked_mul(t.storage.elem).is_some_and(|n| r.len() >= n),
                    "{}: {}{key} holds {} bytes, its storage {} elements of {} bytes",
                    named(),
                    archive.prefix,
                    r.len(),
                    t.storage.numel,
                    t.storage.elem
                );
                storages.insert(key, r.clone());
                r
            }
        };
        tensors.push((name.clone(), TorchTensor { bytes: bytes_of, ..(**t).clone() }));
    }
    ensure!(
        !tensors.is_empty(),
        "{}: no tensors at {found_at} (its keys: {:?}); expected a state dict, or upstream's checkpoint with \
         trainer.gpt_fsdp",
        named(),
        dict.keys().into_iter().take(10).collect::<Vec<_>>()
    );
    Ok(TorchWeights { tensors, found_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_checked_against_their_storage() {
        // a view past its storage's end
        let storage = Rc::new(Storage {
            class: "FloatStorage".into(),
            dtype: TorchDtype::F32,
            elem: 4,
            key: "0".into(),
            numel: 4,
        });
        let t = TorchTensor {
            shape: vec![2, 3],
            dtype: TorchDtype::F32,
            storage,
            bytes: 0..16,
            offset: 0,
            stride: vec![3, 1],
        };
        let e = t.values(&[0u8; 16]).unwrap_err().to_string();
        assert!(e.contains("a view of 6 elements reaching element 5 of a storage of 4"), "{e}");
        // a storage claiming more elements than its entry's bytes hold (one key named twice)
        let storage = Rc::new(Storage { numel: 100, ..(*t.storage).clone() });
        let e = TorchTensor { storage, ..t.clone() }.values(&[0u8; 16]).unwrap_err().to_string();
        assert!(e.contains("data/0 holds 16 bytes, the view reads 24"), "{e}");
        // a stride-0 view repeating its storage's elements
        let e =
            TorchTensor { shape: vec![8], stride: vec![0], ..t.clone() }.values(&[0u8; 16]).unwrap_err().to_string();
        assert!(e.contains("a view of 8 elements"), "{e}");
        // a transposed view reads the values in the tensor's own order
        let bytes: Vec<u8> = [1f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let transposed = TorchTensor { shape: vec![2, 2], stride: vec![1, 2], ..t.clone() };
        assert_eq!(transposed.values(&bytes).unwrap(), [1.0, 3.0, 2.0, 4.0]);
    }
}
