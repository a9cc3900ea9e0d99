//! An opened dataset folder: the manifest plus every shard, memory-mapped, with a global row index
//! (rows numbered shard after shard in manifest order).

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
        Ok(Dataset { dir: dir.into(), manifest, shards, row_starts })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shard files in the folder that the manifest does not list, which training never reads (see
    /// [`Manifest::unlisted_shards`]): worth a warning before a run.
    pub fn unlisted_shards(&self) -> Result<Vec<PathBuf>> {
        self.manifest.unlisted_shards(&self.dir)
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
        let mut out = vec![Vec::new(); self.manifest.schedules.len()];
        for (s, shard) in self.shards.iter().enumerate() {
            for (i, b) in shard.buckets().enumerate() {
                out[b as usize].push(self.row_starts[s] + i as u64);
            }
        }
        out
    }
}

/// A checksum of which rows each bucket holds (`rows_by_bucket`): with the seed and the global batch it
/// fixes the order of the samples, so two datasets of one checksum are drawn in the same order.
pub fn buckets_fingerprint(rows_by_bucket: &[Vec<u64>]) -> String {
    let mut h = 0u32;
    for (b, rows) in rows_by_bucket.iter().enumerate() {
        h = crc32c::crc32c_append(h, &(b as u64).to_le_bytes());
        h = crc32c::crc32c_append(h, &(rows.len() as u64).to_le_bytes());
        for r in rows {
            h = crc32c::crc32c_append(h, &r.to_le_bytes());
        }
    }
    format!("{h:08x}")
}
