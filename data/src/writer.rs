//! Writing a dataset: rows are appended in order, grouped into Arrow record batches, and rolled over
//! into a new shard file when a shard reaches its target size. `finish` seals the last shard and writes
//! the manifest last, atomically; a folder without a manifest is an unfinished dataset.
//!
//! Every file is written under a hidden staging name (`.shard-00000.arrow.pending`; the companion files
//! of [`DatasetWriter::file`] too: the tokenizer, the images list), and only `finish` takes an old
//! dataset's files away (`overwrite`) and renames the new ones into place before writing the manifest:
//! a dataset replaced stays whole until its replacement is. A write that fails before that (a bad
//! image, a full disk) removes what it staged, leaving the folder as it found it (a full disk not full);
//! one that fails while `finish` puts the files in place (a rename, the manifest's write) leaves an
//! unfinished dataset, with no manifest, to write again; one killed leaves staged files that the next
//! writer in the folder removes.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Int32Builder, StringBuilder, UInt16Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::writer::FileWriter;
use arrow_schema::Schema;

use crate::error::{DataError, Result, ARROW_IPC_FILE};
use crate::format::{self, Columns};
use crate::manifest::{Manifest, ShardEntry, MANIFEST_FILE};
use crate::reader::{check_row, RowRef};

/// One row to write, owned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowData {
    pub id: u64,
    pub bucket: u16,
    /// Packed bits `[L, ⌈d/8⌉]` (see [`format::pack_bits`]).
    pub bits: Vec<u8>,
    /// f16 little-endian `[d, H, W]`.
    pub latent: Option<Vec<u8>>,
    pub class_label: Option<i32>,
    /// f16/bf16 little-endian `[n_tokens, width]`.
    pub text_emb: Option<Vec<u8>>,
    /// The same for the short caption (none: the row has no short caption).
    pub text_emb_short: Option<Vec<u8>>,
    pub caption: Option<String>,
}

impl From<RowRef<'_>> for RowData {
    /// A row read, owned (to write it again, edited).
    fn from(r: RowRef<'_>) -> RowData {
        RowData {
            id: r.id,
            bucket: r.bucket,
            bits: r.bits.to_vec(),
            latent: r.latent.map(<[u8]>::to_vec),
            class_label: r.class_label,
            text_emb: r.text_emb.map(<[u8]>::to_vec),
            text_emb_short: r.text_emb_short.map(<[u8]>::to_vec),
            caption: r.caption.map(str::to_owned),
        }
    }
}

/// Knobs of the writer.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Rows per Arrow record batch.
    pub batch_rows: usize,
    /// A shard is closed once its data reaches this many bytes.
    pub shard_bytes: u64,
    /// Replace an existing dataset in the folder.
    pub overwrite: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { batch_rows: 1024, shard_bytes: 256 << 20, overwrite: false }
    }
}

struct OpenShard {
    /// Its name in the dataset (written under its staging name until `finish`).
    file: String,
    writer: FileWriter<BufWriter<File>>,
    rows: u64,
    bytes: u64,
    bucket_rows: Vec<u64>,
}

struct Builders {
    id: UInt64Builder,
    bucket: UInt16Builder,
    bits: BinaryBuilder,
    latent: BinaryBuilder,
    class_label: Int32Builder,
    text_emb: BinaryBuilder,
    text_emb_short: BinaryBuilder,
    caption: StringBuilder,
    rows: usize,
}

/// Streams rows into shards of one dataset folder.
pub struct DatasetWriter {
    dir: PathBuf,
    manifest: Manifest,
    columns: Columns,
    schema: Arc<Schema>,
    opts: WriterOptions,
    shard: Option<OpenShard>,
    builders: Builders,
    /// Replacing a dataset: the files its manifest lists, removed at `finish`.
    replacing: Option<Vec<String>>,
    /// The files written, all under staging names: renamed into place at `finish`, removed if it never
    /// comes (a failed write leaves the folder as it found it, a full disk not full).
    staged: Vec<String>,
    /// The files `finish` has renamed into place so far: a first write that fails after them (the
    /// manifest on a full disk) removes them too.
    placed: Vec<String>,
    /// The manifest is written: the dataset is whole.
    finished: bool,
    /// The folder's lock, held while writing: one writer at a time ([`lock_folder`]). Dropped after the
    /// files above are removed.
    _lock: FolderLock,
}

/// A dataset folder's lock ([`lock_folder`]) and the folders this writer made for it (the dataset's,
/// and those above it that were missing, the dataset's first): a write that never finished removes
/// them again, while the lock is still held, where they hold nothing but the lock file, so a failed
/// `data pack` leaves no folder behind. (Only the writer that took the lock: one that found it held
/// leaves the folder to its holder.)
struct FolderLock {
    _file: File,
    made: Vec<PathBuf>,
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        crate::file_lock::remove_made_folders(&self.made, WRITER_LOCK);
    }
}

/// The lock file of a folder being written (hidden; left in place, as removing a lock file races with
/// the next writer opening it, but by a first write that failed in a folder it made: [`FolderLock`]).
const WRITER_LOCK: &str = ".writer.lock";

/// An exclusive `flock` on the folder's [`WRITER_LOCK`], or an error: a second `data pack` or `synth`
/// into a folder being written would remove the first one's files as an unfinished dataset's. A file
/// system without locks is warned of, and writes on unlocked.
fn lock_folder(dir: &Path) -> Result<File> {
    use crate::file_lock::{try_lock, unsupported, Lock};
    let path = dir.join(WRITER_LOCK);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| DataError::io(&path, e))?;
    match try_lock(&f, Lock::Exclusive) {
        Ok(true) => {}
        Ok(false) => {
            return Err(DataError::Config(format!(
                "{}: another writer (`infinity data pack` or `synth`) is writing a dataset into it; wait for it to \
                 end, or write into another folder",
                dir.display()
            )))
        }
        Err(e) if unsupported(&e) => tracing::warn!(
            "{} cannot be locked here ({e}: a file system without flock): nothing stops a second writer in \
             this folder",
            path.display()
        ),
        Err(e) => return Err(DataError::io(&path, e)),
    }
    Ok(f)
}

/// A file's staging name until the dataset is finished: hidden, and no `*.arrow` (which `verify` would
/// take for a shard the manifest does not list).
fn staging_name(name: &str) -> String {
    format!(".{name}.pending")
}

impl DatasetWriter {
    /// Start a dataset in `dir`. `header` is the finished manifest minus `shards` and `total_rows`.
    pub fn create(dir: &Path, header: Manifest, opts: WriterOptions) -> Result<DatasetWriter> {
        // (a header refused before the folder is made)
        header.check(&dir.join(MANIFEST_FILE))?;
        DatasetWriter::claim(dir, opts)?.start(header)
    }

    /// Take the folder `dir` for a dataset (made if missing, locked, refused where it holds one and
    /// `opts` does not overwrite) before anything costly is done for it; [`Claim::start`] begins writing.
    pub fn claim(dir: &Path, opts: WriterOptions) -> Result<Claim> {
        if dir.exists() && !dir.is_dir() {
            return Err(DataError::Config(format!("{}: a file, not a folder (a dataset is a folder)", dir.display())));
        }
        let made = crate::file_lock::missing_folders(dir);
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        // (the folder is this writer's from here on, so what it finds stays so: what a killed writer
        // staged is of no dataset)
        let lock = FolderLock { _file: lock_folder(dir)?, made };
        if manifest_path.exists() && !opts.overwrite {
            return Err(DataError::Config(format!(
                "{} already holds a dataset; pass --overwrite to replace it",
                dir.display()
            )));
        }
        remove_staged_leftovers(dir)?;
        let replacing = match manifest_path.exists() {
            // (the dataset replaced stays as it is until `finish`)
            true => Some(listed_files(&manifest_path)),
            false => {
                remove_stale_shards(dir, &[], opts.overwrite)?;
                // (an unfinished dataset may have named its rows' images: not this one's)
                remove_if_there(&dir.join(crate::pack::IMAGES_FILE))?;
                None
            }
        };
        Ok(Claim { dir: dir.to_path_buf(), opts, replacing, lock })
    }
}

/// A folder taken for a dataset ([`DatasetWriter::claim`]): locked, checked, not yet written.
pub struct Claim {
    dir: PathBuf,
    opts: WriterOptions,
    replacing: Option<Vec<String>>,
    lock: FolderLock,
}

impl Claim {
    /// Start writing the dataset whose manifest, minus `shards` and `total_rows`, is `header`.
    pub fn start(self, header: Manifest) -> Result<DatasetWriter> {
        let Claim { dir, opts, replacing, lock } = self;
        header.check(&dir.join(MANIFEST_FILE))?;
        let columns = header.columns();
        let schema = Arc::new(format::schema(columns));
        let manifest = Manifest { shards: vec![], total_rows: 0, ..header };
        let builders = Builders::new();
        let staged = Vec::new();
        let shard = None;
        let finished = false;
        Ok(DatasetWriter {
            dir,
            manifest,
            columns,
            schema,
            opts,
            shard,
            builders,
            replacing,
            staged,
            placed: Vec::new(),
            finished,
            _lock: lock,
        })
    }
}

impl DatasetWriter {
    /// Where to write the dataset's file `name` (a shard, its tokenizer, its images list): its staging
    /// name, renamed to `dir/name` by `finish` (a file of that name there before, such as a tokenizer
    /// kept in the folder, stays as it was until then).
    pub fn file(&mut self, name: &str) -> PathBuf {
        if !self.staged.iter().any(|s| s == name) {
            self.staged.push(name.to_string());
        }
        self.dir.join(staging_name(name))
    }

    /// Append one row. Rows are checked here exactly as the reader checks them, so a builder bug cannot
    /// produce a dataset that the reader rejects.
    pub fn push(&mut self, row: RowData) -> Result<()> {
        let c = self.columns;
        for (declared, present, column) in [
            (c.latent, row.latent.is_some(), format::COL_LATENT),
            (c.class_label, row.class_label.is_some(), format::COL_CLASS),
            (c.text_emb, row.text_emb.is_some(), format::COL_TEXT),
        ] {
            if declared != present {
                let (m, r) = if declared { ("declares", "has none") } else { ("does not declare", "has one") };
                return Err(DataError::Config(format!("row id {}: the manifest {m} `{column}`, the row {r}", row.id)));
            }
        }
        // (a short caption is optional per row, but only where the manifest declares the column)
        if row.text_emb_short.is_some() && !c.text_emb_short {
            return Err(DataError::Config(format!(
                "row id {}: the row has a `{}` the manifest does not declare (conditions.text.short_caption)",
                row.id,
                format::COL_TEXT_SHORT
            )));
        }
        let view = RowRef {
            id: row.id,
            bucket: row.bucket,
            bits: &row.bits,
            latent: row.latent.as_deref(),
            class_label: row.class_label,
            text_emb: row.text_emb.as_deref(),
            text_emb_short: row.text_emb_short.as_deref(),
            caption: row.caption.as_deref(),
        };
        check_row(&view, &self.manifest).map_err(|p| {
            DataError::Config(format!(
                "row id {}: column `{}`: expected {}, found {}",
                row.id, p.column, p.expected, p.found
            ))
        })?;
        let b = &mut self.builders;
        let bytes = [&row.latent, &row.text_emb, &row.text_emb_short]
            .iter()
            .map(|v| v.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
            + row.bits.len()
            + 16;
        b.id.append_value(row.id);
        b.bucket.append_value(row.bucket);
        b.bits.append_value(&row.bits);
        if let Some(v) = &row.latent {
            b.latent.append_value(v);
        }
        if let Some(v) = row.class_label {
            b.class_label.append_value(v);
        }
        if let Some(v) = &row.text_emb {
            b.text_emb.append_value(v);
        }
        if c.text_emb_short {
            b.text_emb_short.append_option(row.text_emb_short.as_deref());
        }
        if c.caption {
            b.caption.append_option(row.caption.as_deref());
        }
        b.rows += 1;
        let shard = self.open_shard()?;
        shard.rows += 1;
        shard.bytes += bytes as u64;
        shard.bucket_rows[row.bucket as usize] += 1;
        if self.builders.rows >= self.opts.batch_rows {
            self.flush_batch()?;
        }
        if self.shard.as_ref().is_some_and(|s| s.bytes >= self.opts.shard_bytes) {
            self.close_shard()?;
        }
        Ok(())
    }

    /// Seal the last shard and write the manifest. Returns the manifest as written.
    pub fn finish(mut self) -> Result<Manifest> {
        self.close_shard()?;
        self.manifest.total_rows = self.manifest.shards.iter().map(|s| s.rows).sum();
        self.manifest.check(&self.dir.join(MANIFEST_FILE))?;
        // (a replacement refused before the old dataset goes leaves what it staged to `Drop`)
        self.put_in_place(self.replacing.clone())?;
        self.manifest.save(&self.dir)?;
        self.finished = true;
        Ok(self.manifest.clone())
    }

    /// The old dataset (where one is replaced, its files `old`) out, the staged one in: the manifest
    /// first, so that the folder never claims shards being replaced (a crash from here on leaves an
    /// unfinished dataset, no mix of two).
    fn put_in_place(&mut self, old: Option<Vec<String>>) -> Result<()> {
        // (every file to put in place is there before anything of the old dataset goes)
        for name in &self.staged {
            let staged = self.dir.join(staging_name(name));
            std::fs::metadata(&staged).map_err(|e| DataError::io(&staged, e))?;
        }
        if let Some(old_files) = old {
            let manifest_path = self.dir.join(MANIFEST_FILE);
            std::fs::remove_file(&manifest_path).map_err(|e| DataError::io(&manifest_path, e))?;
            remove_stale_shards(&self.dir, &old_files, true)?;
            if !self.staged.iter().any(|f| f == crate::pack::IMAGES_FILE) {
                // (the dataset replaced may have named its rows' images: not this one's)
                remove_if_there(&self.dir.join(crate::pack::IMAGES_FILE))?;
            }
        }
        for name in std::mem::take(&mut self.staged) {
            let (from, to) = (self.dir.join(staging_name(&name)), self.dir.join(&name));
            std::fs::rename(&from, &to).map_err(|e| DataError::io(&to, e))?;
            self.placed.push(name);
        }
        crate::manifest::sync_dir(&self.dir);
        Ok(())
    }

    fn open_shard(&mut self) -> Result<&mut OpenShard> {
        if self.shard.is_none() {
            let name = format!("shard-{:05}.arrow", self.manifest.shards.len());
            let path = self.file(&name);
            let f = File::create(&path).map_err(|e| DataError::io(&path, e))?;
            let writer = FileWriter::try_new(BufWriter::with_capacity(1 << 20, f), &self.schema)
                .map_err(|e| DataError::write(&path, ARROW_IPC_FILE, e))?;
            let buckets = self.manifest.schedules.len();
            self.shard = Some(OpenShard { file: name, writer, rows: 0, bytes: 0, bucket_rows: vec![0; buckets] });
        }
        Ok(self.shard.as_mut().unwrap())
    }

    fn flush_batch(&mut self) -> Result<()> {
        if self.builders.rows == 0 {
            return Ok(());
        }
        let cols = self.builders.finish(self.columns);
        let path = self.written(&self.shard.as_ref().expect("rows imply an open shard").file);
        let shard = self.shard.as_mut().expect("rows imply an open shard");
        let batch =
            RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| DataError::write(&path, ARROW_IPC_FILE, e))?;
        shard.writer.write(&batch).map_err(|e| DataError::write(&path, ARROW_IPC_FILE, e))
    }

    fn close_shard(&mut self) -> Result<()> {
        self.flush_batch()?;
        let Some(mut shard) = self.shard.take() else { return Ok(()) };
        let path = self.written(&shard.file);
        shard.writer.finish().map_err(|e| DataError::write(&path, ARROW_IPC_FILE, e))?;
        let file = shard.writer.into_inner().map_err(|e| DataError::write(&path, ARROW_IPC_FILE, e))?;
        let file = file.into_inner().map_err(|e| DataError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| DataError::io(&path, e))?;
        drop(file);
        let (bytes, crc) = file_crc32c(&path)?;
        self.manifest.shards.push(ShardEntry {
            file: shard.file,
            rows: shard.rows,
            bytes,
            crc32c: format!("{crc:08x}"),
            bucket_rows: shard.bucket_rows,
        });
        Ok(())
    }
}

impl DatasetWriter {
    /// Where the file `name` of the new dataset is being written.
    fn written(&self, name: &str) -> PathBuf {
        self.dir.join(staging_name(name))
    }
}

impl Drop for DatasetWriter {
    /// A write that failed before `finish` put files in place leaves the folder as it found it: a
    /// dataset it was to replace as it was, no files of its own (see the module's doc for later).
    fn drop(&mut self) {
        if !self.finished {
            for name in &self.staged {
                let _ = std::fs::remove_file(self.dir.join(staging_name(name)));
            }
            // (a first write's files put in place before its manifest failed: an unfinished dataset's)
            for name in self.placed.iter().filter(|_| self.replacing.is_none()) {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
    }
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::io(path, e)),
        _ => Ok(()),
    }
}

/// The files a writer staged in `dir` (`.NAME.pending`): one writing now, or one killed.
pub(crate) fn staged_files(dir: &Path) -> Result<Vec<String>> {
    let mut staged = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let name = entry.map_err(|e| DataError::io(dir, e))?.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.ends_with(".pending") || name.ends_with(".pending.tmp")) {
            staged.push(name);
        }
    }
    staged.sort();
    Ok(staged)
}

/// Removes the files a killed writer staged.
fn remove_staged_leftovers(dir: &Path) -> Result<()> {
    staged_files(dir)?.iter().try_for_each(|name| remove_if_there(&dir.join(name)))
}

/// The shard files a manifest lists, read leniently (it is about to be replaced, valid or not).
fn listed_files(manifest: &Path) -> Vec<String> {
    let json = std::fs::read(manifest).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let shards = json.as_ref().and_then(|v| v["shards"].as_array()).cloned().unwrap_or_default();
    let plain = |f: &&str| !f.is_empty() && !f.contains(['/', '\\']) && !f.starts_with('.');
    shards.iter().filter_map(|s| s["file"].as_str()).filter(plain).map(str::to_string).collect()
}

/// Whether `name` is what this writer (or tools/write_shards.py) names a shard: `shard-NNNNN.arrow`.
fn is_writer_shard(name: &str) -> bool {
    name.strip_prefix("shard-")
        .and_then(|n| n.strip_suffix(".arrow"))
        .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Clear the shards of an earlier dataset from `dir` before a new one is written: left there, shard
/// files the new manifest does not list would be taken for lost rows (`verify` names them). Removed:
/// the files `old_files` (the replaced manifest's), every `*.arrow` file with `overwrite`, and without
/// it the `shard-NNNNN.arrow` files of a writer that was interrupted before its manifest. Another
/// `*.arrow` file without `overwrite` is refused, named: it may be someone's data.
fn remove_stale_shards(dir: &Path, old_files: &[String], overwrite: bool) -> Result<()> {
    let mut remove = Vec::new();
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let name = entry.map_err(|e| DataError::io(dir, e))?.file_name().to_string_lossy().into_owned();
        if old_files.contains(&name) || (name.ends_with(".arrow") && (overwrite || is_writer_shard(&name))) {
            remove.push(dir.join(&name));
        } else if name.ends_with(".arrow") {
            foreign.push(dir.join(&name));
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        let names: Vec<String> = foreign.iter().take(5).map(|p| p.display().to_string()).collect();
        let more = if foreign.len() > 5 { format!(" and {} more", foreign.len() - 5) } else { String::new() };
        return Err(DataError::Config(format!(
            "{}: holds shard files but no manifest.json ({}{more}); the new dataset would not list them: \
             remove them, or pass --overwrite to delete them",
            dir.display(),
            names.join(", ")
        )));
    }
    for p in &remove {
        remove_if_there(p)?;
    }
    if !remove.is_empty() && old_files.is_empty() && !overwrite {
        tracing::info!(
            "{}: removed {} shard file{} of an unfinished dataset (no manifest.json)",
            dir.display(),
            remove.len(),
            if remove.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Size and crc32c of what is on disk (read back through a mapping, not from what we think we wrote).
pub fn file_crc32c(path: &Path) -> Result<(u64, u32)> {
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: read-only mapping of a file this process just finished writing.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| DataError::io(path, e))?;
    Ok((map.len() as u64, crc32c::crc32c(&map)))
}

impl Builders {
    fn new() -> Builders {
        Builders {
            id: UInt64Builder::new(),
            bucket: UInt16Builder::new(),
            bits: BinaryBuilder::new(),
            latent: BinaryBuilder::new(),
            class_label: Int32Builder::new(),
            text_emb: BinaryBuilder::new(),
            text_emb_short: BinaryBuilder::new(),
            caption: StringBuilder::new(),
            rows: 0,
        }
    }

    /// The built columns in schema order; builders are reset.
    fn finish(&mut self, c: Columns) -> Vec<ArrayRef> {
        self.rows = 0;
        let mut cols: Vec<ArrayRef> =
            vec![Arc::new(self.id.finish()), Arc::new(self.bucket.finish()), Arc::new(self.bits.finish())];
        if c.latent {
            cols.push(Arc::new(self.latent.finish()));
        }
        if c.class_label {
            cols.push(Arc::new(self.class_label.finish()));
        }
        if c.text_emb {
            cols.push(Arc::new(self.text_emb.finish()));
        }
        if c.text_emb_short {
            cols.push(Arc::new(self.text_emb_short.finish()));
        }
        if c.caption {
            cols.push(Arc::new(self.caption.finish()));
        }
        cols
    }
}
