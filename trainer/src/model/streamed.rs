//! safetensors files written a tensor at a time: a checkpoint's (or an export's) tensors go from the
//! values to the file with no copy of the file in memory. `safetensors::serialize` builds the whole file in one buffer,
//! and the tensors' bytes before it: at 8B parameters writing a checkpoint held some 28 bytes per
//! parameter (235 GB) beyond the values themselves.
//!
//! The bytes are the ones `safetensors::serialize` makes (tested): the header through the crate's own
//! [`Metadata`], the tensors in its order (alignment, then name).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use safetensors::tensor::{Metadata, TensorInfo, View};
use safetensors::Dtype;

/// A tensor whose file bytes are made when it is written: f32 values as they are (borrowed, on a
/// little-endian host), bf16 rounded then, zeros made then.
pub enum Values<'a> {
    F32(&'a [f32]),
    Bf16(&'a [f32]),
    Zeros(Dtype, usize),
}

/// A [`Values`] with its shape: what `safetensors` writes (its [`View`]).
pub struct Lazy<'a> {
    pub values: Values<'a>,
    pub shape: Vec<usize>,
}

impl View for Lazy<'_> {
    fn dtype(&self) -> Dtype {
        match self.values {
            Values::F32(_) => Dtype::F32,
            Values::Bf16(_) => Dtype::BF16,
            Values::Zeros(dtype, _) => dtype,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self.values {
            Values::F32(v) if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(v)),
            Values::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Values::Bf16(v) => Cow::Owned(v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()),
            Values::Zeros(dtype, n) => Cow::Owned(vec![0; n * dtype.bitsize() / 8]),
        }
    }

    fn data_len(&self) -> usize {
        match self.values {
            Values::F32(v) => 4 * v.len(),
            Values::Bf16(v) => 2 * v.len(),
            Values::Zeros(dtype, n) => n * dtype.bitsize() / 8,
        }
    }
}

/// Write `tensors` (with `metadata`) to `w` as a safetensors file, one tensor's bytes at a time.
pub fn write<W: Write, V: View>(
    w: &mut W,
    mut tensors: Vec<(String, V)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    // the order `safetensors::serialize` writes: larger alignment first, then by name
    tensors.sort_by(|(a, ta), (b, tb)| tb.dtype().cmp(&ta.dtype()).then(a.cmp(b)));
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|(name, t)| {
            let at = offset;
            offset += t.data_len();
            let info = TensorInfo { dtype: t.dtype(), shape: t.shape().to_vec(), data_offsets: (at, offset) };
            (name.clone(), info)
        })
        .collect();
    let mut header = serde_json::to_vec(&Metadata::new(metadata, infos)?)?;
    // (the readers' limit, safetensors' MAX_HEADER_SIZE: `serialize` refuses a larger header too)
    ensure!(
        header.len() <= 100_000_000,
        "a safetensors header of {} bytes: over the 100 MB readers accept",
        header.len()
    );
    // (the data starts 8-byte aligned: the header is padded with spaces)
    header.resize(header.len().next_multiple_of(8), b' ');
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    for (_, t) in &tensors {
        w.write_all(&t.data())?;
    }
    Ok(())
}

/// `tensors` written to a new safetensors file at `path` ([`write`]) and synced; returns the file's
/// crc32c, taken as it is written.
pub fn write_file<V: View>(
    path: &Path,
    tensors: Vec<(String, V)>,
    meta: Option<HashMap<String, String>>,
) -> Result<u32> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = Crc32cWriter { inner: std::io::BufWriter::with_capacity(1 << 22, f), crc: 0 };
    write(&mut w, tensors, meta)
        .and_then(|_| Ok(w.inner.into_inner().map_err(|e| e.into_error())?.sync_all()?))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(w.crc)
}

/// A writer that keeps the crc32c of what went through it.
struct Crc32cWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for Crc32cWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_file_has_the_bytes_safetensors_serialize_makes() {
        let (a, b): (Vec<f32>, Vec<f32>) = ((0..12).map(|i| i as f32 * 0.37 - 2.0).collect(), vec![1.5, -0.25, 3.0]);
        let lazy = || {
            vec![
                ("z.bias".to_string(), Lazy { values: Values::Zeros(Dtype::F32, 4), shape: vec![4] }),
                ("a.weight".to_string(), Lazy { values: Values::F32(&a), shape: vec![3, 4] }),
                ("m.half".to_string(), Lazy { values: Values::Bf16(&b), shape: vec![3] }),
                ("empty".to_string(), Lazy { values: Values::F32(&[]), shape: vec![0] }),
            ]
        };
        let meta = || Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        for metadata in [None, meta()] {
            let mut streamed = Vec::new();
            write(&mut streamed, lazy(), metadata.clone()).unwrap();
            assert_eq!(streamed, safetensors::serialize(lazy(), metadata).unwrap());
            let st = safetensors::SafeTensors::deserialize(&streamed).unwrap();
            assert_eq!(st.tensor("a.weight").unwrap().data(), bytemuck::cast_slice::<f32, u8>(&a));
            assert_eq!(st.tensor("m.half").unwrap().dtype(), Dtype::BF16);
            assert_eq!(st.tensor("z.bias").unwrap().data(), [0u8; 16]);
        }
        // a file: the same bytes, its checksum taken on the way
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.safetensors");
        let crc = write_file(&path, lazy(), meta()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((crc, bytes.clone()), (crc32c::crc32c(&bytes), safetensors::serialize(lazy(), meta()).unwrap()));
    }
}
