//! `manifest.json`: what a dataset folder holds. Written last and atomically, so a folder with a
//! manifest is a complete dataset; readers trust the shard files only as far as the manifest vouches
//! for them (size, checksum, row counts).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::format::{self, Columns};
use crate::schedule::{Catalog, ScaleSchedule};

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `infinity-bits`.
    pub format: String,
    pub format_version: u32,
    /// Bits per token (= latent channels).
    pub d: u32,
    /// Human-readable statement of the bit order (see `format.rs`).
    pub bit_order: String,
    pub tokenizer: TokenizerInfo,
    pub conditions: Conditions,
    /// Present when rows carry the continuous latent.
    pub latent: Option<LatentInfo>,
    /// Indexed by the `bucket` column.
    pub schedules: Vec<ScaleSchedule>,
    pub shards: Vec<ShardEntry>,
    pub total_rows: u64,
    /// Free-form provenance: the command that made the dataset.
    pub created_by: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    /// `patch-pca-bsq` for the built-in tokenizer, e.g. `bsq-vae-d32` for upstream's VAE.
    pub name: String,
    /// A file in the dataset folder holding the tokenizer (the built-in one can decode bits to images).
    pub file: Option<String>,
    /// Tokenizer-specific settings (patch size, latent scale, measured PSNR, ...).
    #[serde(default)]
    pub params: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    pub class: Option<ClassInfo>,
    pub text: Option<TextInfo>,
    /// Rows carry a `caption` string.
    #[serde(default)]
    pub caption: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassInfo {
    pub num_classes: u32,
    /// Optional names, indexed by class id.
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextDtype {
    F16,
    Bf16,
}

impl TextDtype {
    /// Little-endian 16-bit values of this type as f32.
    pub fn to_f32(self, bytes: &[u8]) -> Vec<f32> {
        let pairs = bytes.chunks_exact(2).map(|c| [c[0], c[1]]);
        match self {
            TextDtype::F16 => pairs.map(|b| half::f16::from_le_bytes(b).to_f32()).collect(),
            TextDtype::Bf16 => pairs.map(|b| half::bf16::from_le_bytes(b).to_f32()).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextInfo {
    /// Channels per text token (upstream `Ct5`, 2048 for flan-t5-xl).
    pub width: u32,
    pub dtype: TextDtype,
    /// Upper bound on tokens per caption (upstream `text_maxlen`, 512).
    pub max_tokens: u32,
    /// What made the embeddings.
    pub encoder: String,
    /// Rows may carry a short caption's embedding too (`text_emb_short`, null where a row has none),
    /// which training takes instead of the long one with probability `data.short_cap_prob`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub short_caption: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentInfo {
    /// Always `f16`.
    pub dtype: String,
    /// Always `d,H,W`.
    pub layout: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name relative to the dataset folder.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    /// crc32c of the whole file, 8 lowercase hex digits.
    pub crc32c: String,
    /// Rows per bucket, indexed like `schedules`.
    pub bucket_rows: Vec<u64>,
}

impl Manifest {
    /// Rows per bucket over every shard, indexed like `schedules`.
    pub fn rows_per_bucket(&self) -> Vec<u64> {
        let mut out = vec![0u64; self.schedules.len()];
        for s in &self.shards {
            for (slot, n) in out.iter_mut().zip(&s.bucket_rows) {
                *slot += n;
            }
        }
        out
    }

    pub fn columns(&self) -> Columns {
        Columns {
            latent: self.latent.is_some(),
            class_label: self.conditions.class.is_some(),
            text_emb: self.conditions.text.is_some(),
            text_emb_short: self.conditions.text.as_ref().is_some_and(|t| t.short_caption),
            caption: self.conditions.caption,
        }
    }

    /// Reads and checks `dir/manifest.json`. Unknown keys are errors naming their path.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| match dir.is_file() {
            true => not_a_folder(dir),
            // (the manifest is written last: a folder without one is no dataset, or an unfinished one)
            false if !dir.exists() => DataError::Config(format!("{}: no such folder", dir.display())),
            false if dir.is_dir() && e.kind() == std::io::ErrorKind::NotFound => DataError::Config(format!(
                "{}: not a dataset: it holds no {MANIFEST_FILE} (which `infinity data synth|pack` and \
                 tools/write_shards.py write last: an unfinished write or copy?)",
                dir.display()
            )),
            false => DataError::io(&path, e),
        })?;
        // some Windows editors save UTF-8 with a byte-order mark, which JSON parsers reject
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let de = &mut serde_json::Deserializer::from_str(text);
        let m: Manifest = serde_path_to_error::deserialize(&mut *de).map_err(|e| DataError::Manifest {
            path: path.clone(),
            detail: format!("at `{}`: {}", e.path(), e.inner()),
        })?;
        // nothing may follow the object (a truncated rewrite or two concatenated manifests)
        de.end().map_err(|e| DataError::Manifest { path: path.clone(), detail: format!("after the manifest: {e}") })?;
        m.check(&path)?;
        Ok(m)
    }

    /// Internal consistency: version, schedules, counts.
    pub fn check(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, expected: String, found: String| DataError::ManifestInvalid {
            path: path.to_path_buf(),
            key: key.into(),
            expected,
            found,
        };
        if self.format != format::FORMAT_NAME {
            return Err(bad("format", format!("`{}`", format::FORMAT_NAME), format!("`{}`", self.format)));
        }
        if self.format_version != format::FORMAT_VERSION {
            return Err(bad(
                "format_version",
                format!("{} (this build reads only that)", format::FORMAT_VERSION),
                self.format_version.to_string(),
            ));
        }
        if self.d == 0 || self.d > 1024 {
            return Err(bad("d", "1..=1024 bits per token".into(), self.d.to_string()));
        }
        // the format has one bit order; a writer that states another packs its bits some other way
        if self.bit_order != format::BIT_ORDER {
            return Err(bad("bit_order", format!("`{}`", format::BIT_ORDER), format!("`{}`", self.bit_order)));
        }
        if self.schedules.is_empty() || self.schedules.len() > u16::MAX as usize {
            return Err(bad("schedules", "1..=65535 schedules".into(), self.schedules.len().to_string()));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.schedules.iter().enumerate() {
            s.validate().map_err(|e| bad(&format!("schedules[{i}]"), "a valid schedule".into(), e))?;
            // the RoPE frame is looked up by this key: another spelling would silently be a custom
            // template, framed by its own last scale instead of upstream's 1M grid
            if let Some(key) = Catalog::upstream().respelled_template(&s.h_div_w_template) {
                return Err(bad(
                    &format!("schedules[{i}].h_div_w_template"),
                    format!("upstream's spelling `{key}` of that aspect-ratio template"),
                    format!("`{}`", s.h_div_w_template),
                ));
            }
            // logs, stats and sampling name a bucket by its schedule's name
            if let Some(j) = names.insert(&s.name, i) {
                let found = format!("`{}`, also schedules[{j}].name", s.name);
                return Err(bad(&format!("schedules[{i}].name"), "a name no other schedule has".into(), found));
            }
        }
        if let Some(l) = &self.latent {
            if l.dtype != "f16" || l.layout != "d,H,W" {
                let found = format!("dtype `{}`, layout `{}`", l.dtype, l.layout);
                return Err(bad("latent", "dtype `f16`, layout `d,H,W`".into(), found));
            }
        }
        if let Some(c) = &self.conditions.class {
            if c.num_classes == 0 {
                return Err(bad("conditions.class.num_classes", "at least 1 class".into(), "0".into()));
            }
            // names are indexed by class id: a list of another length names the wrong classes
            if !c.names.is_empty() && c.names.len() != c.num_classes as usize {
                return Err(bad(
                    "conditions.class.names",
                    format!("no names, or one per class (num_classes = {})", c.num_classes),
                    format!("{} names", c.names.len()),
                ));
            }
        }
        if let Some(t) = &self.conditions.text {
            if t.width == 0 || t.max_tokens == 0 {
                let found = format!("width {}, max_tokens {}", t.width, t.max_tokens);
                return Err(bad("conditions.text", "width > 0 and max_tokens > 0".into(), found));
            }
        }
        let mut total = 0u64;
        // (a dataset is its folder: a tokenizer or shard elsewhere would not travel with a copy of it)
        let plain = |f: &str| !(f.is_empty() || f.contains('/') || f.contains('\\') || f.starts_with('.'));
        if let Some(f) = self.tokenizer.file.as_deref().filter(|f| !plain(f)) {
            return Err(bad("tokenizer.file", "a plain file name in the folder".into(), format!("`{f}`")));
        }
        // (checked against the tokenizer's values where it is text: a number would switch the check off)
        if let Some(c) = self.tokenizer.params.get("crc32c") {
            if !c.as_str().is_some_and(is_crc32c_text) {
                let want = "8 lowercase hex digits, as text (\"0f3a9b21\")".into();
                return Err(bad("tokenizer.params.crc32c", want, c.to_string()));
            }
        }
        let mut files: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.shards.iter().enumerate() {
            // (summed without wrapping: counts near u64::MAX must not add up to a plausible total)
            let sum = s.bucket_rows.iter().try_fold(0u64, |t, &n| t.checked_add(n));
            if s.bucket_rows.len() != self.schedules.len() || sum != Some(s.rows) {
                return Err(bad(
                    &format!("shards[{i}].bucket_rows"),
                    format!("{} entries summing to rows = {}", self.schedules.len(), s.rows),
                    format!("{:?}", s.bucket_rows),
                ));
            }
            if !plain(&s.file) {
                let found = if s.file.is_empty() { "an empty name".into() } else { format!("`{}`", s.file) };
                return Err(bad(&format!("shards[{i}].file"), "a plain file name in the folder".into(), found));
            }
            if !is_crc32c_text(&s.crc32c) {
                let found = format!("`{}`", s.crc32c);
                return Err(bad(&format!("shards[{i}].crc32c"), "8 lowercase hex digits".into(), found));
            }
            // a shard listed twice would be read twice: every row of it seen twice per epoch
            if let Some(j) = files.insert(&s.file, i) {
                let found = format!("`{}`, also shards[{j}].file", s.file);
                return Err(bad(&format!("shards[{i}].file"), "a file no other entry lists".into(), found));
            }
            total = total.checked_add(s.rows).ok_or_else(|| {
                bad(&format!("shards[{i}].rows"), "row counts whose sum fits in 64 bits".into(), s.rows.to_string())
            })?;
        }
        if total != self.total_rows {
            return Err(bad("total_rows", format!("the sum of shard rows ({total})"), self.total_rows.to_string()));
        }
        Ok(())
    }

    /// The shard files (`*.arrow`) in `dir` that this manifest does not list, sorted: nothing reads
    /// them, so their rows are silently not part of the dataset (a writer that was interrupted, or a
    /// shard added by hand without a manifest entry).
    pub fn unlisted_shards(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let listed: std::collections::HashSet<&str> = self.shards.iter().map(|s| s.file.as_str()).collect();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let name = entry.map_err(|e| DataError::io(dir, e))?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".arrow") && !listed.contains(name.as_ref()) {
                out.push(dir.join(name.as_ref()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes `dir/manifest.json` atomically: temporary file, fsync, rename, fsync of the folder.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Add the datasets of a training mix ([`crate::Dataset::join`]): `other`, part `p` (from 1), its
    /// shards listed as `p/file` and its rows counted, so that the fingerprint covers every part.
    pub fn append_part(&mut self, p: usize, other: &Manifest) {
        self.shards.extend(other.shards.iter().map(|e| ShardEntry { file: format!("{p}/{}", e.file), ..e.clone() }));
        self.total_rows += other.total_rows;
        // (short captions are optional per row: the joined rows have them where any part's do)
        if let (Some(t), Some(o)) = (self.conditions.text.as_mut(), other.conditions.text.as_ref()) {
            t.short_caption |= o.short_caption;
        }
    }

    /// A short fingerprint of the dataset: its contents (shard checksums and row counts), then its
    /// bits per token and scale schedules (which the rows are read by): resuming a loader on a
    /// different dataset is refused by comparing it ([`Manifest::fingerprint_matches`]).
    pub fn fingerprint(&self) -> String {
        let mut h = 0u32;
        for s in &self.shards {
            h = crc32c::crc32c_append(h, s.file.as_bytes());
            h = crc32c::crc32c_append(h, s.crc32c.as_bytes());
            h = crc32c::crc32c_append(h, &s.rows.to_le_bytes());
        }
        let layout = serde_json::to_vec(&(self.d, &self.schedules)).expect("schedules serialize");
        format!("{:08x}-{}-s{:08x}", h, self.total_rows, crc32c::crc32c(&layout))
    }

    /// What changed between a saved [`Manifest::fingerprint`] and this dataset, as far as the
    /// fingerprint tells: the row count, the shards (names, checksums, rows: one hash), `d` and the
    /// schedules (another hash). Empty when nothing it covers changed.
    pub fn fingerprint_changes(&self, saved: &str) -> Vec<String> {
        let now = self.fingerprint();
        let parse = |f: &str| -> Option<(String, u64, Option<String>)> {
            let mut parts = f.split('-');
            let contents = parts.next()?.to_string();
            let rows = parts.next()?.parse().ok()?;
            let layout = parts.next().map(str::to_string);
            (contents.len() == 8 && parts.next().is_none()).then_some((contents, rows, layout))
        };
        let (Some(old), Some(new)) = (parse(saved), parse(&now)) else {
            return vec![format!("the saved fingerprint `{saved}` is not one this build writes")];
        };
        let mut out = Vec::new();
        if old.1 != new.1 {
            out.push(format!("the row count changed: {} → {}", old.1, new.1));
        } else if old.0 != new.0 {
            out.push(format!("the shards changed (their names, checksums or row counts; still {} rows in all)", new.1));
        }
        // (an earlier build's fingerprint has no layout part: it cannot tell)
        if old.2.is_some() && old.2 != new.2 {
            out.push("`d` or the scale schedules changed".into());
        }
        out
    }

    /// Whether a saved [`Manifest::fingerprint`] has this dataset's `d` and schedules (its contents may
    /// differ). One saved by an earlier build, without that part, cannot tell: true.
    pub fn same_layout(&self, saved: &str) -> bool {
        let layout = |f: &str| f.splitn(3, '-').nth(2).map(str::to_string);
        layout(saved).is_none_or(|l| Some(l) == layout(&self.fingerprint()))
    }

    /// Whether a saved [`Manifest::fingerprint`] is this dataset's. One saved by an earlier build
    /// (without the schedules' part) is compared on the contents alone.
    pub fn fingerprint_matches(&self, saved: &str) -> bool {
        let now = self.fingerprint();
        match saved.matches('-').count() {
            1 => now.rsplit_once('-').is_some_and(|(contents, _)| contents == saved),
            _ => now == saved,
        }
    }
}

/// Whether `s` is a crc32c as manifests and checkpoints record one: 8 lowercase hex digits.
pub fn is_crc32c_text(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The error for a dataset folder given as a file (read on, `data/manifest.json` would be
/// `data/manifest.json/manifest.json: Not a directory`).
fn not_a_folder(dir: &Path) -> DataError {
    let mut s = format!("{}: must be a dataset folder (the one holding {MANIFEST_FILE}), found a file", dir.display());
    if dir.file_name().is_some_and(|n| n == MANIFEST_FILE) {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        s += &format!(": give {}", parent.display());
    }
    DataError::Config(s)
}

/// Write `bytes` to `path` so that readers see either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomic(path, |tmp| {
        // (errors name the file asked for: the temporary one is this function's own)
        let mut f = std::fs::File::create(tmp).map_err(|e| DataError::io(path, e))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| DataError::io(path, e))
    })
}

/// Replace `path` by the file `write` makes and syncs at the temporary path it is given (beside
/// `path`), renamed over it: readers see either the old file or the complete new one. A failed write's
/// temporary file is removed. The temporary name is hidden and the target's own (`.NAME.tmp`): no file
/// of the user's (`NAME.tmp`) is taken for it, two processes writing beside each other (`x.png` and
/// `x.jpg`) never share one, and a killed write's is replaced by the next.
pub fn replace_atomic<E: From<DataError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let tmp = temporary_path(path);
    // (a write that failed, a full disk's, leaves no temporary file behind)
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// The temporary file [`replace_atomic`] writes `path` into before renaming it over `path`; a write
/// killed before its rename leaves it behind.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Persists the entries of `dir` (a rename or creation in it). Not every platform can open a folder,
/// so a failure here is not an error.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
