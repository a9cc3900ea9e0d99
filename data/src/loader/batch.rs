//! A batch as the trainer receives it: the rank's rows of one global batch, gathered into contiguous
//! buffers (one copy from the mapped shards, none per column element).

use half::f16;

use crate::dataset::Dataset;
use crate::error::Result;
use crate::format;
use crate::manifest::TextDtype;

/// Dims legend: `B` rows in this batch (the rank's share), `L` tokens of the bucket's schedule,
/// `nb = ⌈d/8⌉`, `(H, W)` the last scale, `T` text tokens of all rows, `Ct` text width, `Ts` short-caption
/// text tokens of all rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Absolute global batch number (epoch · batches_per_epoch + batch in epoch, where a mix has no
    /// phases).
    pub global_index: u64,
    /// The (mixed) epoch it belongs to, counted over a mix's phases (a phase starts an epoch).
    pub epoch: u64,
    /// Schedule index into the manifest.
    pub bucket: u16,
    /// The part of a joined dataset its rows come from (0 for one dataset).
    pub part: u16,
    /// `[B]` sample ids.
    pub ids: Vec<u64>,
    /// `[B]` the samples' global rows in the (joined) dataset: [`crate::Dataset::locate`] names their
    /// shard and row.
    pub rows: Vec<u64>,
    /// `[B, L, nb]` packed bits.
    pub bits: Vec<u8>,
    /// `[B, d, H, W]` f16 little-endian bytes.
    pub latent: Option<Vec<u8>>,
    /// `[B]`
    pub class_label: Option<Vec<i32>>,
    /// `[T, Ct]` f16/bf16 little-endian bytes, rows packed without padding.
    pub text_emb: Option<Vec<u8>>,
    /// `[B + 1]` cumulative text token counts (upstream `cu_seqlens_k`).
    pub text_cu_seqlens: Option<Vec<u32>>,
    /// `[Ts, Ct]` the short captions' embeddings, packed likewise (a row without one has no tokens).
    pub text_emb_short: Option<Vec<u8>>,
    /// `[B + 1]` their cumulative token counts.
    pub text_short_cu_seqlens: Option<Vec<u32>>,
    /// `[B]`
    pub captions: Option<Vec<Option<String>>>,
    /// Rows of this rank's slice left out because they were bad (only with `BadRows::Skip`).
    pub skipped: Vec<u64>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Token-major 0/1 bits `[L, d]` of row `i`.
    pub fn unpacked_bits(&self, i: usize, d: usize) -> Vec<u8> {
        let per = self.bits.len() / self.len();
        let mut out = vec![0u8; per / format::bytes_per_token(d) * d];
        format::unpack_bits(&self.bits[i * per..(i + 1) * per], d, &mut out);
        out
    }

    /// Latent `[d, H, W]` of row `i` as f32.
    pub fn latent_f32(&self, i: usize) -> Option<Vec<f32>> {
        let lat = self.latent.as_ref()?;
        let per = lat.len() / self.len();
        Some(lat[i * per..(i + 1) * per].chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
    }

    /// Text embedding `[n_tokens, Ct]` of row `i` as f32.
    pub fn text_f32(&self, i: usize, width: usize, dtype: TextDtype) -> Option<Vec<f32>> {
        Some(packed_row(self.text_emb.as_ref()?, self.text_cu_seqlens.as_ref()?, i, width, dtype))
    }

    /// Short-caption text embedding `[n_tokens, Ct]` of row `i` as f32, where the row has one.
    pub fn text_short_f32(&self, i: usize, width: usize, dtype: TextDtype) -> Option<Vec<f32>> {
        let (emb, cu) = (self.text_emb_short.as_ref()?, self.text_short_cu_seqlens.as_ref()?);
        (cu[i + 1] > cu[i]).then(|| packed_row(emb, cu, i, width, dtype))
    }
}

/// Row `i` of rows packed without padding (`[T, width]` 16-bit values, `cu` their cumulative token
/// counts) as f32.
fn packed_row(emb: &[u8], cu: &[u32], i: usize, width: usize, dtype: TextDtype) -> Vec<f32> {
    dtype.to_f32(&emb[cu[i] as usize * width * 2..cu[i + 1] as usize * width * 2])
}

/// Append `src` (`[n, width]` 16-bit values, `row_bytes` a token) to `dst` and its end to `cu`.
fn push_packed(dst: &mut Vec<u8>, cu: &mut Vec<u32>, src: &[u8], row_bytes: usize) {
    dst.extend_from_slice(src);
    cu.push(cu.last().unwrap() + (src.len() / row_bytes) as u32);
}

/// Gather `rows` (global row ids, all of `bucket`) into a batch, reusing the buffers of `spare` (a batch
/// the consumer handed back) when given. Each row is validated; a bad row is an error, or with
/// `skip_bad` it is left out and recorded in `skipped`.
pub fn gather(ds: &Dataset, bucket: u16, rows: &[u64], skip_bad: bool, spare: Option<Batch>) -> Result<Batch> {
    let c = ds.manifest.columns();
    let width = ds.manifest.conditions.text.as_ref().map_or(0, |t| t.width as usize * 2);
    // Exact sizes up front: growing multi-megabyte buffers by doubling would copy them several times.
    let (n, d) = (rows.len(), ds.manifest.d as usize);
    let sched = &ds.manifest.schedules[bucket as usize];
    let (h, w) = sched.latent_hw();
    let mut b = spare.unwrap_or_default();
    let reset = |v: &mut Vec<u8>, cap: usize| {
        v.clear();
        v.reserve(cap);
    };
    b.bucket = bucket;
    b.ids.clear();
    b.rows.clear();
    b.skipped.clear();
    reset(&mut b.bits, n * sched.num_tokens() * format::bytes_per_token(d));
    b.latent = c.latent.then(|| {
        let mut v = b.latent.take().unwrap_or_default();
        reset(&mut v, n * d * h * w * 2);
        v
    });
    b.class_label = c.class_label.then(|| {
        b.class_label
            .take()
            .map(|mut v| {
                v.clear();
                v
            })
            .unwrap_or_default()
    });
    let emptied = |v: Option<Vec<u8>>| {
        let mut v = v.unwrap_or_default();
        v.clear();
        v
    };
    b.text_emb = c.text_emb.then(|| emptied(b.text_emb.take()));
    b.text_cu_seqlens = c.text_emb.then(|| vec![0]);
    b.text_emb_short = c.text_emb_short.then(|| emptied(b.text_emb_short.take()));
    b.text_short_cu_seqlens = c.text_emb_short.then(|| vec![0]);
    b.captions = c.caption.then(Vec::new);
    for &g in rows {
        if let Err(e) = ds.validate_row(g) {
            if skip_bad {
                tracing::warn!("skipping bad row: {e}");
                b.skipped.push(g);
                continue;
            }
            return Err(e);
        }
        let row = ds.row(g);
        if row.bucket != bucket {
            // The plan was built from this dataset's bucket column: a mismatch means the files changed.
            return Err(crate::error::DataError::Loader(format!(
                "row {g} (id {}) is in bucket {}, the sampler expected {bucket}; did the dataset change under a running loader?",
                row.id, row.bucket
            )));
        }
        b.ids.push(row.id);
        b.rows.push(g);
        b.bits.extend_from_slice(row.bits);
        if let (Some(dst), Some(src)) = (&mut b.latent, row.latent) {
            dst.extend_from_slice(src);
        }
        if let (Some(dst), Some(src)) = (&mut b.class_label, row.class_label) {
            dst.push(src);
        }
        if let (Some(dst), Some(cu), Some(src)) = (&mut b.text_emb, &mut b.text_cu_seqlens, row.text_emb) {
            push_packed(dst, cu, src, width);
        }
        // (a row without a short caption: no tokens)
        if let (Some(dst), Some(cu)) = (&mut b.text_emb_short, &mut b.text_short_cu_seqlens) {
            push_packed(dst, cu, row.text_emb_short.unwrap_or_default(), width);
        }
        if let Some(dst) = &mut b.captions {
            dst.push(row.caption.map(str::to_owned));
        }
    }
    Ok(b)
}
