//! An opened dataset folder: the manifest plus every shard, memory-mapped, with a global row index
//! (rows numbered shard after shard in manifest order). Several folders of one layout can be joined
//! into one ([`Dataset::join`]) for a training mix: their rows numbered folder after folder.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::manifest::Manifest;
use crate::reader::{Checksums, RowRef, Shard};

pub struct Dataset {
    dir: PathBuf,
    pub manifest: Manifest,
    shards: Vec<Shard>,
    /// Global index of each shard's first row, plus the total at the end.
    row_starts: Vec<u64>,
    /// The folders joined (one for a folder opened alone), in order.
    parts: Vec<Part>,
}

/// One dataset folder of a joined [`Dataset`].
pub struct Part {
    pub dir: PathBuf,
    /// Its own manifest (the joined dataset's lists every part's shards).
    pub manifest: Manifest,
    /// Its global row ids.
    pub rows: Range<u64>,
}

impl Dataset {
    /// Open `dir`: read the manifest, map every shard, check sizes, checksums (all, a share or none), schemas
    /// and row counts against the manifest.
    pub fn open(dir: &Path, checksums: Checksums) -> Result<Dataset> {
        let manifest = Manifest::load(dir)?;
        let columns = manifest.columns();
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut row_starts = vec![0u64];
        for (i, entry) in manifest.shards.iter().enumerate() {
            let path = dir.join(&entry.file);
            let shard = Shard::open(&path, Some(entry), columns, checksums.for_shard(i))?;
            if shard.num_rows() as u64 != entry.rows {
                return Err(DataError::ManifestMismatch {
                    path: path.clone(),
                    key: format!("shards[{}].rows", shards.len()),
                    expected: entry.rows.to_string(),
                    found: format!("the file holds {} rows", shard.num_rows()),
                });
            }
            let mut counts = vec![0u64; manifest.schedules.len()];
            for (i, b) in shard.buckets().enumerate() {
                match counts.get_mut(b as usize) {
                    Some(c) => *c += 1,
                    None => shard.validate_row(i, &manifest)?, // names the row and the valid range
                }
            }
            if counts != entry.bucket_rows {
                return Err(DataError::ManifestMismatch {
                    path,
                    key: format!("shards[{}].bucket_rows", shards.len()),
                    expected: format!("{:?}", entry.bucket_rows),
                    found: format!("{counts:?} in the file"),
                });
            }
            row_starts.push(row_starts.last().unwrap() + entry.rows);
            shards.push(shard);
        }
        let part = Part { dir: dir.into(), manifest: manifest.clone(), rows: 0..*row_starts.last().unwrap() };
        Ok(Dataset { dir: dir.into(), manifest, shards, row_starts, parts: vec![part] })
    }

    /// The datasets of `parts` as one, their rows numbered folder after folder, for a training mix.
    /// They must hold the same bits (`d`, schedules: a bucket is a schedule index) and columns (a batch
    /// holds one part's rows, and the model reads the same inputs from each; short captions, optional per
    /// row, aside: the joined dataset has them where any part does). The joined manifest is
    /// the first's, listing every part's shards (part `p > 0`'s files named `p/file`), so its
    /// fingerprint covers them all and is the first's alone for one part.
    pub fn join(parts: Vec<Dataset>) -> Result<Dataset> {
        let mut parts = parts.into_iter();
        let Some(mut out) = parts.next() else {
            return Err(DataError::Config("joining datasets: no dataset given".into()));
        };
        for (p, ds) in parts.enumerate().map(|(i, ds)| (i + 1, ds)) {
            same_layout(&out, &ds)?;
            let offset = out.num_rows();
            out.manifest.append_part(p, &ds.manifest);
            out.row_starts.pop();
            out.row_starts.extend(ds.row_starts.iter().map(|r| r + offset));
            out.shards.extend(ds.shards);
            let Part { dir, manifest, rows } = ds.parts.into_iter().next().expect("an opened folder is one part");
            out.parts.push(Part { dir, manifest, rows: rows.start + offset..rows.end + offset });
        }
        Ok(out)
    }

    /// [`parts_buckets_fingerprint`] of this dataset: which rows each bucket of each part holds.
    pub fn buckets_fingerprint(&self) -> String {
        let lists: Vec<Vec<Vec<u64>>> = (0..self.parts.len()).map(|p| self.part_rows_by_bucket(p)).collect();
        parts_buckets_fingerprint(&lists.iter().map(|l| &l[..]).collect::<Vec<_>>())
    }

    /// The folders this dataset joins (one unless [`Dataset::join`]ed).
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shard files in the folder that the manifest does not list, which training never reads (see
    /// [`Manifest::unlisted_shards`]): worth a warning before a run.
    pub fn unlisted_shards(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for part in &self.parts {
            out.extend(part.manifest.unlisted_shards(&part.dir)?);
        }
        Ok(out)
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn num_rows(&self) -> u64 {
        *self.row_starts.last().unwrap()
    }

    /// `(shard, row within shard)` of global row `g`.
    pub fn locate(&self, g: u64) -> (usize, usize) {
        let s = self.row_starts.partition_point(|&start| start <= g) - 1;
        (s, (g - self.row_starts[s]) as usize)
    }

    /// Global row `g`.
    pub fn row(&self, g: u64) -> RowRef<'_> {
        let (s, r) = self.locate(g);
        self.shards[s].row(r)
    }

    /// Check global row `g` against the manifest (see [`Shard::validate_row`]).
    pub fn validate_row(&self, g: u64) -> Result<()> {
        let (s, r) = self.locate(g);
        self.shards[s].validate_row(r, &self.manifest)
    }

    /// Global row ids per bucket, in storage order: what the sampler shuffles.
    pub fn rows_by_bucket(&self) -> Vec<Vec<u64>> {
        self.rows_by_bucket_in(0..self.num_rows())
    }

    /// [`Dataset::rows_by_bucket`] of part `p` alone (global ids).
    pub fn part_rows_by_bucket(&self, p: usize) -> Vec<Vec<u64>> {
        self.rows_by_bucket_in(self.parts[p].rows.clone())
    }

    fn rows_by_bucket_in(&self, rows: Range<u64>) -> Vec<Vec<u64>> {
        let mut out = vec![Vec::new(); self.manifest.schedules.len()];
        for (s, shard) in self.shards.iter().enumerate() {
            if self.row_starts[s] < rows.start || self.row_starts[s] >= rows.end {
                continue; // (a part's shards are whole)
            }
            for (i, b) in shard.buckets().enumerate() {
                out[b as usize].push(self.row_starts[s] + i as u64);
            }
        }
        out
    }
}

/// Whether `b` can be joined to `a`: the same bits and columns, or an error naming both folders and
/// what differs ([`mix_difference`]).
fn same_layout(a: &Dataset, b: &Dataset) -> Result<()> {
    match mix_difference(&a.manifest, &b.manifest) {
        None => Ok(()),
        Some(what) => {
            Err(DataError::Config(format!("{}: cannot be mixed with {}: {what}", b.dir.display(), a.dir.display())))
        }
    }
}

/// What keeps the dataset of manifest `b` from being mixed with the first one's, `a` (its rows read
/// as `a`'s are: one bucket index, one set of columns, one text encoding), if anything: `d`, the
/// schedules, the columns read in training (all but `caption`), the class count, the text embeddings' width, type, encoder or token bound.
pub fn mix_difference(a: &Manifest, b: &Manifest) -> Option<String> {
    let differs = |what: &str, x: String, y: String| {
        Some(format!("{what} {y} in this one, {x} in the first (mixed datasets must hold the same bits and columns)"))
    };
    if a.d != b.d {
        return differs("d =", a.d.to_string(), b.d.to_string());
    }
    if a.schedules != b.schedules {
        let names = |m: &Manifest| m.schedules.iter().map(|s| s.name.clone()).collect::<Vec<_>>().join(", ");
        return differs("the scale schedules (a bucket is a schedule's index) are", names(a), names(b));
    }
    // (captions are stored for people, not read in training: a batch has them where its rows do; short
    // captions are optional per row, so a dataset without any reads as one whose rows have none)
    let read = |m: &Manifest| crate::format::Columns { caption: false, text_emb_short: false, ..m.columns() };
    if read(a) != read(b) {
        let names = |m: &Manifest| {
            let fields = crate::format::schema(read(m)).fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
            format!("[{}]", fields.join(", "))
        };
        return differs("the columns are", names(a), names(b));
    }
    let class = |m: &Manifest| m.conditions.class.as_ref().map_or("none".into(), |c| c.num_classes.to_string());
    if class(a) != class(b) {
        return differs("the class count is", class(a), class(b));
    }
    let text = |m: &Manifest| {
        m.conditions.text.as_ref().map_or("none".into(), |t| {
            let dtype = match t.dtype {
                crate::manifest::TextDtype::F16 => "f16",
                crate::manifest::TextDtype::Bf16 => "bf16",
            };
            format!("width {}, {dtype}, by `{}`", t.width, t.encoder)
        })
    };
    if text(a) != text(b) {
        return differs("the text embeddings are", text(a), text(b));
    }
    // (rows are checked against the first's bound, which the model is sized for: a caption longer than
    // it would be a bad row at the step that drew it)
    if let (Some(ta), Some(tb)) = (&a.conditions.text, &b.conditions.text) {
        if tb.max_tokens > ta.max_tokens {
            return differs(
                "captions of up to",
                format!("{} tokens", ta.max_tokens),
                format!("{} tokens", tb.max_tokens),
            );
        }
    }
    None
}

/// A checksum of which rows each bucket holds (`rows_by_bucket`): with the seed and the global batch it
/// fixes the order of the samples, so two datasets of one checksum are drawn in the same order.
pub fn buckets_fingerprint(rows_by_bucket: &[Vec<u64>]) -> String {
    parts_buckets_fingerprint(&[rows_by_bucket])
}

/// [`buckets_fingerprint`] of a joined dataset from its parts' [`Dataset::part_rows_by_bucket`] (the
/// whole's bucket lists are theirs end to end), without the whole's lists; for several parts, their
/// sizes too (rows moved from one folder to the next keep their ids, not their streams).
pub fn parts_buckets_fingerprint(parts: &[&[Vec<u64>]]) -> String {
    let mut h = 0u32;
    if parts.len() > 1 {
        for p in parts {
            h = crc32c::crc32c_append(h, &(p.iter().map(Vec::len).sum::<usize>() as u64).to_le_bytes());
        }
    }
    for b in 0..parts.first().map_or(0, |p| p.len()) {
        let rows = || parts.iter().flat_map(move |p| p[b].iter());
        h = crc32c::crc32c_append(h, &(b as u64).to_le_bytes());
        h = crc32c::crc32c_append(h, &(rows().count() as u64).to_le_bytes());
        for r in rows() {
            h = crc32c::crc32c_append(h, &r.to_le_bytes());
        }
    }
    format!("{h:08x}")
}
