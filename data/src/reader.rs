//! Reading one shard: memory-map the file, check it against its manifest entry, decode the Arrow IPC
//! footer and record batches zero-copy (every column buffer points into the mapping), and hand out
//! borrowed row views.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::{Array, BinaryArray, Int32Array, RecordBatch, StringArray, UInt16Array, UInt64Array};
use arrow_buffer::Buffer;
use arrow_ipc::reader::{read_footer_length, FileDecoder};
use arrow_ipc::{convert::try_fb_to_schema, root_as_footer};
use arrow_schema::{DataType, SchemaRef};
use memmap2::Mmap;

use crate::error::{DataError, Result};
use crate::format::{self, Columns};
use crate::manifest::{Manifest, ShardEntry};

/// Whether to hash every shard when it is opened. Hashing runs at several GB/s and touches pages the
/// loader reads anyway; turn it off only for benchmarks of the raw read path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksums {
    Verify,
    Skip,
    /// One of `world` readers' share of a dataset's shards: those whose index in the manifest is
    /// `rank` modulo `world`. A node's training ranks hash its copy once between them (every rank
    /// hashing all of it read the dataset once per rank, at every start and restart).
    Share {
        rank: usize,
        world: usize,
    },
}

impl Checksums {
    /// How shard `index` of a dataset is opened: hashed, or not.
    pub fn for_shard(self, index: usize) -> Checksums {
        match self {
            Checksums::Share { rank, world } if index % world.max(1) == rank => Checksums::Verify,
            Checksums::Share { .. } => Checksums::Skip,
            whole => whole,
        }
    }

    /// These checksums for a dataset whose shards follow `shards_before` others (a folder of a mix):
    /// the shares are dealt over all of them, so many small folders do not all fall to the first ranks.
    pub fn after(self, shards_before: usize) -> Checksums {
        match self {
            Checksums::Share { rank, world } => {
                let world = world.max(1);
                Checksums::Share { rank: (rank + world - shards_before % world) % world, world }
            }
            whole => whole,
        }
    }
}

/// The typed columns of one record batch (cheap clones of Arc'd arrays over the mapping).
struct BatchColumns {
    id: UInt64Array,
    bucket: UInt16Array,
    bits: BinaryArray,
    latent: Option<BinaryArray>,
    class_label: Option<Int32Array>,
    text_emb: Option<BinaryArray>,
    text_emb_short: Option<BinaryArray>,
    caption: Option<StringArray>,
}

/// One opened shard.
pub struct Shard {
    path: PathBuf,
    batches: Vec<BatchColumns>,
    /// Row index where each batch starts, plus the total at the end.
    batch_starts: Vec<usize>,
    /// Address range of the mapping (kept alive by the column buffers).
    map_start: usize,
    map_len: usize,
}

/// A borrowed view of one row. Byte slices point into the memory-mapped file.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub id: u64,
    pub bucket: u16,
    /// Packed bits `[L, ⌈d/8⌉]`.
    pub bits: &'a [u8],
    /// f16 little-endian `[d, H, W]`.
    pub latent: Option<&'a [u8]>,
    pub class_label: Option<i32>,
    /// f16/bf16 little-endian `[n_tokens, width]`.
    pub text_emb: Option<&'a [u8]>,
    /// The same for the short caption, where the row has one.
    pub text_emb_short: Option<&'a [u8]>,
    pub caption: Option<&'a str>,
}

impl Shard {
    /// Open `path`, checking size and (optionally) checksum against `entry`, and the schema against
    /// `columns`.
    pub fn open(path: &Path, entry: Option<&ShardEntry>, columns: Columns, checksums: Checksums) -> Result<Shard> {
        let file = std::fs::File::open(path).map_err(|e| match (e.kind(), entry) {
            (std::io::ErrorKind::NotFound, Some(entry)) => {
                DataError::Missing { path: path.into(), expected: entry.bytes }
            }
            _ => DataError::io(path, e),
        })?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if let Some(e) = entry {
            if len != e.bytes {
                return Err(DataError::Size { path: path.into(), expected: e.bytes, found: len });
            }
        }
        if len < 18 {
            return Err(DataError::corrupt(path, format!("{len} bytes is too short for an Arrow IPC file")));
        }
        // SAFETY: the mapping is read-only; shards are immutable once their manifest is written. A file
        // truncated underneath a live mapping would fault, as it would for any mmap reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        let (map_start, map_len) = (mmap.as_ptr() as usize, mmap.len());
        if let (Some(e), Checksums::Verify) = (entry, checksums) {
            let found = format!("{:08x}", crc32c::crc32c(&mmap));
            if found != e.crc32c {
                // (zlib's CRC-32, which Python's zlib.crc32 gives, is the usual mistake of a writer)
                let why = match format!("{:08x}", crc32fast::hash(&mmap)) == e.crc32c {
                    true => {
                        "the manifest holds zlib's CRC-32 of the file (zlib.crc32, binascii.crc32): the format \
                             wants CRC-32C (Castagnoli), e.g. the `crc32c` package's crc32c()"
                    }
                    false => "corrupt shard, or a checksum other than CRC-32C",
                };
                let (expected, why) = (e.crc32c.clone(), why.to_string());
                return Err(DataError::Checksum { path: path.into(), expected, found, why });
            }
        }
        // `decode` checks what Arrow's decoder would assert on; should a malformed file still reach an
        // assertion inside Arrow, it becomes this shard's error rather than a crash of the training run.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(path, mmap)));
        let (schema, batches) =
            decoded.unwrap_or_else(|_| Err(DataError::corrupt(path, "malformed IPC message (decoder rejected it)")))?;
        // the columns checked against the file's schema itself, once: a file without record batches
        // has one too (its batches, each checked below, share it)
        BatchColumns::new(path, &RecordBatch::new_empty(schema), columns, 0)?;
        let starts = batches.iter().scan(0, |row, b| Some(std::mem::replace(row, *row + b.num_rows())));
        let cols = (batches.iter().zip(starts))
            .map(|(b, first_row)| BatchColumns::new(path, b, columns, first_row))
            .collect::<Result<Vec<_>>>()?;
        let mut batch_starts = vec![0usize];
        for b in &cols {
            batch_starts.push(batch_starts.last().unwrap() + b.id.len());
        }
        Ok(Shard { path: path.to_path_buf(), batches: cols, batch_starts, map_start, map_len })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn num_rows(&self) -> usize {
        *self.batch_starts.last().unwrap()
    }

    /// The `bucket` column of every row, in order (zero-copy per batch).
    pub fn buckets(&self) -> impl Iterator<Item = u16> + '_ {
        self.batches.iter().flat_map(|b| b.bucket.values().iter().copied())
    }

    /// Row `i` of this shard. Panics if `i >= num_rows()` (an index bug, not bad data).
    pub fn row(&self, i: usize) -> RowRef<'_> {
        let b = self.batch_starts.partition_point(|&s| s <= i) - 1;
        let c = &self.batches[b];
        let r = i - self.batch_starts[b];
        RowRef {
            id: c.id.value(r),
            bucket: c.bucket.value(r),
            bits: c.bits.value(r),
            latent: c.latent.as_ref().map(|a| a.value(r)),
            class_label: c.class_label.as_ref().map(|a| a.value(r)),
            text_emb: c.text_emb.as_ref().map(|a| a.value(r)),
            text_emb_short: c.text_emb_short.as_ref().and_then(|a| (!a.is_null(r)).then(|| a.value(r))),
            caption: c.caption.as_ref().and_then(|a| (!a.is_null(r)).then(|| a.value(r))),
        }
    }

    /// Check row `i` against the manifest (see [`check_row`]); the error names file, row and column.
    pub fn validate_row(&self, i: usize, m: &Manifest) -> Result<()> {
        let row = self.row(i);
        check_row(&row, m).map_err(|p| DataError::Row {
            path: self.path.clone(),
            row: i as u64,
            id: row.id,
            column: p.column.into(),
            expected: p.expected,
            found: p.found,
        })
    }

    /// Whether `p` points into this shard's memory mapping (zero-copy reads do).
    pub fn is_mapped(&self, p: *const u8) -> bool {
        (self.map_start..self.map_start + self.map_len).contains(&(p as usize))
    }
}

/// What is wrong with a row: the column, what was expected and what was found.
#[derive(Debug)]
pub struct RowProblem {
    pub column: &'static str,
    pub expected: String,
    pub found: String,
}

/// Check a row against the manifest: bucket in range, bit and tensor lengths match its schedule,
/// padding bits are zero, labels in range. Shared by the reader and the writer.
pub fn check_row(row: &RowRef, m: &Manifest) -> std::result::Result<(), RowProblem> {
    let fail = |column, expected, found| Err(RowProblem { column, expected, found });
    let Some(sched) = m.schedules.get(row.bucket as usize) else {
        return fail(format::COL_BUCKET, format!("a schedule index < {}", m.schedules.len()), row.bucket.to_string());
    };
    let d = m.d as usize;
    let nb = format::bytes_per_token(d);
    let want = sched.num_tokens() * nb;
    if row.bits.len() != want {
        return fail(
            format::COL_BITS,
            format!("{want} bytes (L = {} tokens of schedule `{}` × {nb} bytes)", sched.num_tokens(), sched.name),
            format!("{} bytes", row.bits.len()),
        );
    }
    let pad = format::padding_mask(d);
    if pad != 0 {
        if let Some(t) = row.bits.chunks_exact(nb).position(|tok| tok[nb - 1] & pad != 0) {
            return fail(format::COL_BITS, format!("zero padding bits above bit {d}"), format!("token {t} sets them"));
        }
    }
    if let Some(lat) = row.latent {
        let (h, w) = sched.latent_hw();
        let want = d * h * w * 2;
        if lat.len() != want {
            return fail(
                format::COL_LATENT,
                format!("{want} bytes (f16 [d={d}, {h}, {w}])"),
                format!("{} bytes", lat.len()),
            );
        }
    }
    if let (Some(c), Some(info)) = (row.class_label, &m.conditions.class) {
        if c < 0 || c as u32 >= info.num_classes {
            return fail(format::COL_CLASS, format!("a class in [0, {})", info.num_classes), c.to_string());
        }
    }
    if let Some(info) = &m.conditions.text {
        for (column, t) in [(format::COL_TEXT, row.text_emb), (format::COL_TEXT_SHORT, row.text_emb_short)] {
            let Some(t) = t else { continue };
            let tok = info.width as usize * 2;
            let n = t.len() / tok;
            if t.len() % tok != 0 || n == 0 || n > info.max_tokens as usize {
                // (what the length would be in a writer's usual mistakes: empty bytes for none, f32 values)
                let found = match t.len() {
                    0 if column == format::COL_TEXT_SHORT => {
                        "0 bytes (a row without a short caption holds a null, not empty bytes)".to_string()
                    }
                    len if len % (2 * tok) == 0 && (1..=info.max_tokens as usize).contains(&(len / (2 * tok))) => {
                        format!(
                            "{len} bytes ({n} tokens at 2 bytes a value, or {} at 4: f32 values where the manifest \
                             says {}?)",
                            len / (2 * tok),
                            serde_json::to_string(&info.dtype).unwrap_or_default()
                        )
                    }
                    len if len % tok == 0 => format!("{len} bytes ({n} tokens)"),
                    len => format!("{len} bytes (not a whole number of tokens)"),
                };
                return fail(column, format!("1..={} tokens × width {} × 2 bytes", info.max_tokens, info.width), found);
            }
        }
    }
    Ok(())
}

/// Whether a text embedding's bytes, declared 16-bit values, look like little-endian f32 values stored
/// instead: f16 or bf16 values widened to f32 (every f32's low half, the even-indexed 16-bit values,
/// holds at most its top 3 bits, and an odd-indexed one is not zero), or values that read as f32 are
/// all finite and moderate where the 16-bit ones read as NaN or infinite (an all-ones `exponent`, given
/// where some are) are low halves, more than one: an f32's low half is its mantissa's tail, all-ones
/// where it falls so (one in 32), and a 16-bit value's NaN alone is no sign of f32.
pub fn looks_like_f32(bytes: &[u8], exponent: Option<u16>) -> bool {
    let halves: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    if halves.len() < 8 || !halves.len().is_multiple_of(2) {
        return false;
    }
    let widened =
        halves.iter().step_by(2).all(|h| h & 0x1fff == 0) && halves.iter().skip(1).step_by(2).any(|&h| h != 0);
    // (text-encoder features are finite and well below 1e4)
    let moderate = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).abs() < 1e4;
    let in_low_halves = |e: u16| {
        let non_finite: Vec<usize> = (0..halves.len()).filter(|&i| halves[i] & e == e).collect();
        non_finite.len() > 1 && non_finite.iter().all(|i| i % 2 == 0)
    };
    widened || exponent.is_some_and(|e| in_low_halves(e) && bytes.chunks_exact(4).all(moderate))
}

/// The first value of a row's latent or text embedding that is a NaN or an infinity: `(column, index)`.
/// Not part of [`check_row`] (the loader's per-row check stays a length check): `verify` looks, and
/// training stops on the decoded value.
pub fn non_finite(row: &RowRef, m: &Manifest) -> Option<(&'static str, usize)> {
    // f16 and bf16 mark infinities and NaN with an all-ones exponent, at different bits
    let first = |bytes: &[u8], exponent: u16| {
        bytes.chunks_exact(2).position(|b| u16::from_le_bytes([b[0], b[1]]) & exponent == exponent)
    };
    if let Some(i) = row.latent.and_then(|l| first(l, 0x7c00)) {
        return Some((format::COL_LATENT, i));
    }
    let exponent = text_non_finite_exponent(m);
    [(format::COL_TEXT, row.text_emb), (format::COL_TEXT_SHORT, row.text_emb_short)]
        .into_iter()
        .find_map(|(column, t)| t.and_then(|t| first(t, exponent)).map(|i| (column, i)))
}

/// The all-ones exponent of the text features' 16-bit type (f16 or bf16): its NaNs and infinities.
pub(crate) fn text_non_finite_exponent(m: &Manifest) -> u16 {
    let bf16 = m.conditions.text.as_ref().is_some_and(|t| t.dtype == crate::manifest::TextDtype::Bf16);
    if bf16 {
        0x7f80
    } else {
        0x7c00
    }
}

/// The Arrow schema a shard file declares in its footer, as written (not checked against a manifest):
/// what `infinity data inspect` shows.
pub fn file_schema(path: &Path) -> Result<arrow_schema::Schema> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: read-only mapping, dropped before returning; see `Shard::open` on files changed underneath.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
    let range = footer_range(path, &map)?;
    let footer = root_as_footer(&map[range]).map_err(|e| DataError::corrupt(path, e))?;
    let fb_schema = footer.schema().ok_or_else(|| DataError::corrupt(path, "footer has no schema"))?;
    try_fb_to_schema(fb_schema).map_err(|e| DataError::corrupt(path, e))
}

/// Where the footer of the IPC file in `bytes` lies, after checking the magic at both ends.
fn footer_range(path: &Path, bytes: &[u8]) -> Result<Range<usize>> {
    const MAGIC: &[u8] = b"ARROW1";
    let len = bytes.len();
    if len < 18 {
        return Err(DataError::corrupt(path, format!("{len} bytes is too short for an Arrow IPC file")));
    }
    if &bytes[..6] != MAGIC || &bytes[len - 6..] != MAGIC {
        // name the usual mistakes: the IPC stream format (it starts with a continuation marker) or Parquet
        let what = if bytes[..4] == [0xff; 4] {
            "it is an Arrow IPC *stream* (pa.ipc.new_stream), not the IPC *file* format shards use"
        } else if &bytes[..4] == b"PAR1" {
            "it is a Parquet file, not the Arrow IPC file format shards use"
        } else {
            "missing the ARROW1 magic at start or end (a truncated file, or another format)"
        };
        return Err(DataError::corrupt(path, format!("{what}; pyarrow writes shards with pa.ipc.new_file")));
    }
    let trailer = len - 10;
    let footer_len =
        read_footer_length(bytes[trailer..].try_into().unwrap()).map_err(|e| DataError::corrupt(path, e))?;
    if footer_len > trailer {
        return Err(DataError::corrupt(path, format!("footer length {footer_len} exceeds the file")));
    }
    Ok(trailer - footer_len..trailer)
}

/// Decode footer and record batches of an IPC file held in `mmap`, without copying column data.
/// The file's schema and its record batches.
fn decode(path: &Path, mmap: Mmap) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let len = mmap.len();
    let footer_at = footer_range(path, &mmap)?;
    let ptr = NonNull::new(mmap.as_ptr() as *mut u8).expect("mmap of a non-empty file is non-null");
    // SAFETY: `ptr` and `len` describe the mapping, which the Arc keeps alive as long as any Buffer does.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(mmap)) };
    let corrupt = |e: &dyn std::fmt::Display| DataError::corrupt(path, e);
    let footer_start = footer_at.start;
    let footer = root_as_footer(&buffer[footer_at]).map_err(|e| corrupt(&e))?;
    let fb_schema = footer.schema().ok_or_else(|| corrupt(&"footer has no schema"))?;
    let schema = try_fb_to_schema(fb_schema).map_err(|e| corrupt(&e))?;
    let units = buffer_units(&schema).map_err(|e| corrupt(&e))?;
    // (every buffer is 8-byte aligned, as check_block makes sure; an ignored decimal column, whose
    // type asks for 16, is copied into alignment rather than refused)
    let schema = Arc::new(schema);
    // decoded with every column nullable: a null in a column declared without nulls is then named by
    // row and id where the columns are checked (`BatchColumns`), not refused here as a whole batch
    let decoder = FileDecoder::new(Arc::new(relaxed(&schema, false)), footer.version()).with_require_alignment(false);
    if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
        return Err(corrupt(&"dictionary-encoded columns are not part of the shard format"));
    }
    let blocks = footer.recordBatches().ok_or_else(|| corrupt(&"footer lists no record batches"))?;
    let mut out: Vec<RecordBatch> = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let range = block_range(block.offset(), block.metaDataLength(), block.bodyLength(), footer_start)
            .ok_or_else(|| corrupt(&format!("record batch {i} lies outside the file")))?;
        let meta_len = block.metaDataLength() as usize;
        check_block(&buffer[range.clone()], meta_len, &units)
            .map_err(|e| corrupt(&format!("record batch {i}: {e}")))?;
        let data = buffer.slice_with_length(range.start, range.len());
        let batch = decoder
            .read_record_batch(block, &data)
            .map_err(|e| {
                // (text that is not UTF-8: named by column, row and id, read again as bytes)
                let first_row = out.iter().map(RecordBatch::num_rows).sum();
                let as_bytes = FileDecoder::new(Arc::new(relaxed(&schema, true)), footer.version());
                let read = as_bytes.with_require_alignment(false).read_record_batch(block, &data);
                match read.ok().flatten().and_then(|b| not_utf8(path, &schema, &b, first_row)) {
                    Some(named) => named,
                    None => corrupt(&format!("record batch {i}: {e}")),
                }
            })?
            .ok_or_else(|| corrupt(&format!("record batch {i} is empty")))?;
        out.push(batch);
    }
    Ok((schema, out))
}

/// `schema` with every column nullable, and with `text_as_bytes` its text columns read as binary (the
/// same buffers: a decode that does not check UTF-8).
fn relaxed(schema: &arrow_schema::Schema, text_as_bytes: bool) -> arrow_schema::Schema {
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Utf8 if text_as_bytes => DataType::Binary,
                DataType::LargeUtf8 if text_as_bytes => DataType::LargeBinary,
                t => t.clone(),
            };
            arrow_schema::Field::new(f.name(), t, true)
        })
        .collect();
    arrow_schema::Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// The first value of a text column of `schema` that is not UTF-8 in `batch` (decoded with its text as
/// bytes, [`relaxed`]), whose first row is the shard's row `first_row`.
fn not_utf8(path: &Path, schema: &arrow_schema::Schema, batch: &RecordBatch, first_row: usize) -> Option<DataError> {
    use arrow_array::cast::AsArray;
    let id = |r: usize| {
        let ids = batch.column_by_name(format::COL_ID)?.as_any().downcast_ref::<UInt64Array>()?;
        ids.is_valid(r).then(|| ids.value(r))
    };
    for (c, f) in schema.fields().iter().enumerate() {
        let column = batch.column(c);
        let bad = match f.data_type() {
            DataType::Utf8 => {
                let a = column.as_binary::<i32>();
                (0..a.len()).find(|&r| a.is_valid(r) && std::str::from_utf8(a.value(r)).is_err())
            }
            DataType::LargeUtf8 => {
                let a = column.as_binary::<i64>();
                (0..a.len()).find(|&r| a.is_valid(r) && std::str::from_utf8(a.value(r)).is_err())
            }
            _ => None,
        };
        if let Some(r) = bad {
            return Some(DataError::Row {
                path: path.into(),
                row: (first_row + r) as u64,
                id: id(r).unwrap_or(u64::MAX),
                column: f.name().clone(),
                expected: "text in UTF-8".into(),
                found: "bytes that are not UTF-8".into(),
            });
        }
    }
    None
}

/// Element size of every IPC buffer of a flat schema, in buffer order (1 = any length). Shards are flat
/// tables; nested or dictionary types are refused here, before any batch is decoded.
fn buffer_units(schema: &arrow_schema::Schema) -> std::result::Result<Vec<usize>, String> {
    let mut units = Vec::new();
    for f in schema.fields() {
        let t = f.data_type();
        match t {
            DataType::Binary | DataType::Utf8 => units.extend([1, 4, 1]),
            DataType::LargeBinary | DataType::LargeUtf8 => units.extend([1, 8, 1]),
            DataType::Boolean | DataType::FixedSizeBinary(_) => units.extend([1, 1]),
            DataType::Null => {} // no buffers (an all-None column from pandas)
            t if t.is_primitive() => units.extend([1, t.primitive_width().unwrap_or(1)]),
            t => {
                return Err(format!(
                    "column `{}` has type {t}, which the shard format does not read (extra columns may be \
                     numbers, decimals, dates and timestamps, booleans, null, (large) binary or strings, \
                     fixed-size binary)",
                    f.name()
                ))
            }
        }
    }
    Ok(units)
}

/// Check a record-batch block before Arrow's decoder sees it. The decoder asserts (panics) on buffer
/// descriptors that point outside the message body or whose length is not a whole number of elements,
/// so every buffer must lie inside the body, be 8-byte aligned (as the IPC format requires) and hold
/// whole elements (`units`, from [`buffer_units`]); the batch must be uncompressed.
fn check_block(block: &[u8], meta_len: usize, units: &[usize]) -> std::result::Result<(), String> {
    if meta_len < 8 || meta_len > block.len() {
        return Err(format!("metadata length {meta_len} does not fit the block of {} bytes", block.len()));
    }
    let msg = if block[..4] == [0xff; 4] { &block[8..meta_len] } else { &block[4..meta_len] };
    let msg = arrow_ipc::root_as_message(msg).map_err(|e| format!("unreadable message header: {e}"))?;
    let rb = msg.header_as_record_batch().ok_or("the block is not a record batch")?;
    if rb.compression().is_some() {
        return Err("compressed record batches are not part of the shard format".into());
    }
    if rb.length() < 0 || rb.nodes().is_some_and(|n| n.iter().any(|n| n.length() < 0 || n.null_count() < 0)) {
        return Err("negative row or null count".into());
    }
    let body = (block.len() - meta_len) as i64;
    let buffers = rb.buffers().ok_or("no buffer list")?;
    if buffers.len() != units.len() {
        return Err(format!("{} buffers, the schema needs {}", buffers.len(), units.len()));
    }
    for (k, (b, &unit)) in buffers.iter().zip(units).enumerate() {
        let end = b.offset().checked_add(b.length());
        if b.offset() < 0 || b.length() < 0 || end.is_none_or(|e| e > body) || b.offset() % 8 != 0 {
            return Err(format!(
                "buffer {k} (offset {}, length {}) lies outside the {body}-byte body",
                b.offset(),
                b.length()
            ));
        }
        if b.length() % unit as i64 != 0 {
            return Err(format!("buffer {k} has length {}, not a multiple of its {unit}-byte elements", b.length()));
        }
    }
    Ok(())
}

/// Byte range of an IPC block, if it lies within `[0, limit)`.
fn block_range(offset: i64, meta: i32, body: i64, limit: usize) -> Option<Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let len = usize::try_from(meta).ok()?.checked_add(usize::try_from(body).ok()?)?;
    let end = start.checked_add(len)?;
    (end <= limit && start % 8 == 0 && usize::try_from(meta).ok()? <= len).then_some(start..end)
}

impl BatchColumns {
    /// The columns of `batch`, whose first row is the shard's row `first_row`.
    fn new(path: &Path, batch: &RecordBatch, want: Columns, first_row: usize) -> Result<BatchColumns> {
        fn column<A: Array + Clone + 'static>(
            path: &Path,
            batch: &RecordBatch,
            first_row: usize,
            name: &str,
            ty: DataType,
            nullable_ok: bool,
        ) -> Result<A> {
            let schema_err = |found: String| DataError::Schema {
                path: path.into(),
                column: name.into(),
                expected: format!("{ty}{}", if nullable_ok { "" } else { " without nulls" }),
                found,
            };
            let col = batch.column_by_name(name).ok_or_else(|| schema_err("no such column".into()))?;
            if col.data_type() != &ty {
                return Err(schema_err(col.data_type().to_string()));
            }
            if !nullable_ok && col.null_count() > 0 {
                // (named by row, and by id where the id column has one there)
                let i = (0..col.len()).find(|&i| col.is_null(i)).expect("a null counted");
                let id = batch
                    .column_by_name(format::COL_ID)
                    .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                    .filter(|ids| ids.is_valid(i))
                    .map_or(String::new(), |ids| format!(", id {}", ids.value(i)));
                let n = col.null_count();
                let (values, first) = if n == 1 { ("value", "") } else { ("values", "the first ") };
                return Err(schema_err(format!("{n} null {values} ({first}at row {}{id})", first_row + i)));
            }
            Ok(col.as_any().downcast_ref::<A>().expect("type checked above").clone())
        }
        let unexpected = |name: &str, wanted: bool| -> Result<()> {
            if !wanted && batch.column_by_name(name).is_some() {
                let key = match name {
                    format::COL_TEXT_SHORT => " (conditions.text.short_caption)",
                    _ => "",
                };
                return Err(DataError::Schema {
                    path: path.into(),
                    column: name.into(),
                    expected: format!("no such column (the manifest does not declare it{key})"),
                    found: "the column".into(),
                });
            }
            Ok(())
        };
        unexpected(format::COL_LATENT, want.latent)?;
        unexpected(format::COL_CLASS, want.class_label)?;
        unexpected(format::COL_TEXT, want.text_emb)?;
        unexpected(format::COL_TEXT_SHORT, want.text_emb_short)?;
        unexpected(format::COL_CAPTION, want.caption)?;
        Ok(BatchColumns {
            id: column(path, batch, first_row, format::COL_ID, DataType::UInt64, false)?,
            bucket: column(path, batch, first_row, format::COL_BUCKET, DataType::UInt16, false)?,
            bits: column(path, batch, first_row, format::COL_BITS, DataType::Binary, false)?,
            latent: want
                .latent
                .then(|| column(path, batch, first_row, format::COL_LATENT, DataType::Binary, false))
                .transpose()?,
            class_label: want
                .class_label
                .then(|| column(path, batch, first_row, format::COL_CLASS, DataType::Int32, false))
                .transpose()?,
            text_emb: want
                .text_emb
                .then(|| column(path, batch, first_row, format::COL_TEXT, DataType::Binary, false))
                .transpose()?,
            text_emb_short: want
                .text_emb_short
                .then(|| column(path, batch, first_row, format::COL_TEXT_SHORT, DataType::Binary, true))
                .transpose()?,
            caption: want
                .caption
                .then(|| column(path, batch, first_row, format::COL_CAPTION, DataType::Utf8, true))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use half::f16;
    use rand::{Rng, SeedableRng};

    use super::looks_like_f32;

    /// f32 features stored where f16 ones are declared read as f32; f16 ones with a NaN do not, wherever
    /// it falls (a NaN in a low half was told "f32 where the manifest says f16?").
    #[test]
    fn f32_bytes_are_told_from_a_nan_among_f16_values() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let values: Vec<f32> = (0..4 * 37).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes = |nan_at: usize| -> Vec<u8> {
            let mut h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            h[nan_at] = f16::NAN;
            h.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        assert!(looks_like_f32(&f32_bytes, Some(0x7c00)), "random f32 values");
        for nan_at in [0, 1, 10, 11, 4 * 37 - 1] {
            assert!(!looks_like_f32(&f16_bytes(nan_at), Some(0x7c00)), "a NaN at {nan_at}");
        }
        // (f16 values widened to f32, finite both ways)
        let widened: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_f32().to_le_bytes()).collect();
        assert!(looks_like_f32(&widened, None));
        assert!(!looks_like_f32(&f16_bytes(0)[..], None));
    }
}
