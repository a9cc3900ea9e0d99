//! `infinity data inspect | verify | stats`: look at a dataset, check all of it, and measure its bits.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use infinity_kernels::bsq;
use rayon::prelude::*;

use crate::error::Result;
use crate::format;
use crate::manifest::Manifest;
use crate::reader::{Checksums, RowRef, Shard};
use crate::schedule::ScaleSchedule;
use crate::tokenizer::Image;
use crate::Dataset;

/// What [`inspect`] found: a summary for people, and whether the first shard's schema is one the
/// reader takes.
#[derive(Debug)]
pub struct Inspection {
    /// Manifest, schedules, shards and the Arrow schema, for a terminal.
    pub summary: String,
    /// Why the first shard cannot be read as the manifest describes it (unreadable, a column missing
    /// or of another type), where it cannot.
    pub schema_problem: Option<String>,
}

/// A human-readable summary: manifest, schedules, shards and the Arrow schema.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let m = Manifest::load(dir)?;
    let mut s = String::new();
    let _ = writeln!(s, "dataset      {}", dir.display());
    let _ = writeln!(s, "format       {} v{}, d = {} bits per token", m.format, m.format_version, m.d);
    let _ = writeln!(s, "bit order    {}", m.bit_order);
    let _ = writeln!(s, "tokenizer    {} ({})", m.tokenizer.name, m.tokenizer.file.as_deref().unwrap_or("no file"));
    let _ = writeln!(s, "             {}", m.tokenizer.params);
    if let Some(c) = &m.conditions.class {
        let _ = writeln!(s, "class        {} class{}", c.num_classes, if c.num_classes == 1 { "" } else { "es" });
        // (ids are places in this list: what `sample --class` and the class histogram of `stats` count)
        let shown: Vec<String> = c.names.iter().take(12).enumerate().map(|(k, name)| format!("{k}: {name}")).collect();
        if !shown.is_empty() {
            let more = c.names.len().saturating_sub(shown.len());
            let more = if more > 0 { format!(", … ({more} more)") } else { String::new() };
            let _ = writeln!(s, "             {}{more}", shown.join(", "));
        }
    }
    if let Some(t) = &m.conditions.text {
        let short = if t.short_caption { ", short captions too" } else { "" };
        let (w, dtype, max, enc) = (t.width, t.dtype, t.max_tokens, &t.encoder);
        let _ = writeln!(s, "text         width {w}, {dtype:?}, ≤ {max} tokens, {enc}{short}");
    }
    let _ = writeln!(s, "caption      {}", if m.conditions.caption { "yes" } else { "no" });
    let _ = writeln!(
        s,
        "latent       {}",
        m.latent.as_ref().map_or("no".into(), |l| format!("{} [{}]", l.dtype, l.layout))
    );
    let _ = writeln!(
        s,
        "rows         {} in {} shard{}, {:.1} MiB",
        m.total_rows,
        m.shards.len(),
        if m.shards.len() == 1 { "" } else { "s" },
        m.shards.iter().map(|s| s.bytes).sum::<u64>() as f64 / (1 << 20) as f64
    );
    let _ = writeln!(s, "schedules");
    let bucket_rows = m.rows_per_bucket();
    // (the built-in tokenizer's patch: the images' size, which the budget's name does not say alone)
    let patch = m.tokenizer.params.get("patch").and_then(|p| p.as_u64()).map(|p| p as usize);
    for (b, sch) in m.schedules.iter().enumerate() {
        let rows = bucket_rows[b];
        let (h, w) = sch.latent_hw();
        let pixels = patch.map_or(String::new(), |p| format!(" ({}×{} px)", h * p, w * p));
        let patches = match sch.spatial_patchify {
            true => format!(" (spatial patchify: {} tokens of 2×2)", sch.num_tokens() / 4),
            false => String::new(),
        };
        let _ = writeln!(
            s,
            "  [{b}] {:<14} {:>2} scales, L = {:>5}, latent {h}×{w}{pixels}, {rows} row{}{patches}",
            sch.name,
            sch.scales.len(),
            sch.num_tokens(),
            if rows == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(s, "shards");
    for e in m.shards.iter().take(8) {
        let rows = if e.rows == 1 { "1 row".into() } else { format!("{} rows", e.rows) };
        let _ = writeln!(s, "  {}  {rows}  {} bytes  crc32c {}", e.file, e.bytes, e.crc32c);
    }
    if m.shards.len() > 8 {
        let _ = writeln!(s, "  … {} more", m.shards.len() - 8);
    }
    let schema_problem = write_schema(&mut s, dir, &m);
    Ok(Inspection { summary: s, schema_problem })
}

/// The Arrow schema of the first shard as the file declares it (a writer's mistake shows here), each
/// column marked where the manifest expects another type or no such column; returns what makes the
/// shard unreadable as the manifest describes it, if anything does.
fn write_schema(s: &mut String, dir: &Path, m: &Manifest) -> Option<String> {
    let expected = format::schema(m.columns());
    let all = format::schema(format::Columns {
        latent: true,
        class_label: true,
        text_emb: true,
        text_emb_short: true,
        caption: true,
    });
    let Some(first) = m.shards.first() else {
        let _ = writeln!(s, "arrow schema (no shards; the manifest's columns)");
        for f in expected.fields() {
            let _ = writeln!(s, "  {:<12} {}", f.name(), f.data_type());
        }
        return None;
    };
    let _ = writeln!(s, "arrow schema of {}", first.file);
    let schema = match crate::reader::file_schema(&dir.join(&first.file)) {
        Ok(schema) => schema,
        Err(e) => {
            let _ = writeln!(s, "  unreadable: {e}");
            return Some(e.to_string()); // (it names the file)
        }
    };
    let mut problems = Vec::new();
    for f in schema.fields() {
        let note = match expected.field_with_name(f.name()) {
            Ok(want) if want.data_type() != f.data_type() => {
                problems.push(format!("`{}` is {}, the format expects {}", f.name(), f.data_type(), want.data_type()));
                format!("  (the format expects {})", want.data_type())
            }
            Ok(_) => String::new(),
            Err(_) if all.field_with_name(f.name()).is_ok() => "  (the manifest does not declare it)".into(),
            Err(_) => "  (not a format column: ignored)".into(),
        };
        let nullable = if f.is_nullable() { " (nullable)" } else { "" };
        let _ = writeln!(s, "  {:<12} {}{nullable}{note}", f.name(), f.data_type());
    }
    for f in expected.fields().iter().filter(|f| schema.field_with_name(f.name()).is_err()) {
        let _ = writeln!(s, "  {:<12} missing (the format expects {})", f.name(), f.data_type());
        problems.push(format!("no `{}` column", f.name()));
    }
    (!problems.is_empty()).then(|| format!("{}: {}", first.file, problems.join(", ")))
}

/// What `verify` found. `problems` is empty for a sound dataset.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub shards: usize,
    pub rows_checked: u64,
    /// The problems listed (at most 20 rows per shard and kind, 20 repeated ids).
    pub problems: Vec<String>,
    /// The problems found beyond those listed, and what each note says of them.
    pub unlisted: usize,
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Every problem found, listed or not.
    pub fn count(&self) -> usize {
        self.problems.len() + self.unlisted
    }
}

/// Where a row's bits are not the multi-scale BSQ of its stored latent: `(token, bit, residual)` of the
/// first bit that is not the sign of its residual by more than rounding, and how many there are. Each
/// scale's residual is the latent less the codes of the row's own bits of the scales before it
/// ([`bsq::residuals_given_bits`]): a bit whose residual is within `1e-4 · max(1, max |latent|)` of zero
/// may go either way in two faithful implementations (another tokenizer's float order), and the later
/// scales that follow from the way it went are as faithful. The first bit named is where the row goes
/// wrong; the bits after it count those that disagree with the history it made.
pub fn bsq_mismatch(row: &RowRef, sched: &ScaleSchedule, d: usize) -> Option<((usize, usize, f32), usize)> {
    let latent = crate::manifest::TextDtype::F16.to_f32(row.latent?); // the stored f16 values, widened
    let scales = sched.hw();
    let mut stored = vec![0u8; bsq::num_tokens(&scales) * d];
    format::unpack_bits(row.bits, d, &mut stored);
    let residual = bsq::residuals_given_bits(&latent, d, &scales, &stored);
    let tol = 1e-4 * latent.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let mut wrong = (0..stored.len()).filter(|&i| stored[i] != (residual[i] > 0.0) as u8 && residual[i].abs() > tol);
    let first = wrong.next()?;
    Some(((first / d, first % d, residual[first]), 1 + wrong.count()))
}

/// The note of a dataset where most rows' bits are not their latents' BSQ: the usual causes.
const BSQ_HINT: &str = "most rows' bits differ from their latent's multi-scale BSQ, which points at the writer's \
     conventions (docs/data-format.md, \"Bits: order and packing\"): bit i of a token is bit i % 8 of byte i / 8 \
     (least significant first), the latent is channel-major [d, H, W], `area` is adaptive average pooling and \
     `bilinear` has align_corners=False, and the bits are those of the stored f16 latent, not of the f32 one \
     before rounding";

/// Check everything: manifest, every shard's size, checksum, schema and row count, every row (its bits
/// against the BSQ of its latent too), that ids are unique, and the tokenizer file. Keeps going after a
/// problem so one run lists them all (at most 20 rows per shard and 20 repeated ids).
pub fn verify(dir: &Path) -> VerifyReport {
    let mut r = VerifyReport::default();
    let m = match Manifest::load(dir) {
        Ok(m) => m,
        Err(e) => {
            r.problems.push(e.to_string());
            return r;
        }
    };
    let mut ids: HashMap<u64, (usize, usize)> = HashMap::new(); // sized by the rows read, not the manifest
    let mut repeated = 0usize;
    for (i, entry) in m.shards.iter().enumerate() {
        let path = dir.join(&entry.file);
        let shard = match Shard::open(&path, Some(entry), m.columns(), Checksums::Verify) {
            Ok(s) => s,
            Err(e) => {
                r.problems.push(e.to_string());
                continue;
            }
        };
        r.shards += 1;
        if shard.num_rows() as u64 != entry.rows {
            r.problems.push(format!(
                "{}: holds {} rows, manifest shards[{i}].rows says {}",
                path.display(),
                shard.num_rows(),
                entry.rows
            ));
        }
        let mut counts = vec![0u64; m.schedules.len()];
        let mut bad = 0;
        let mut sound = Vec::new();
        for row in 0..shard.num_rows() {
            r.rows_checked += 1;
            let id = shard.row(row).id;
            if let Some(earlier) = ids.insert(id, (i, row)) {
                repeated += 1;
                if repeated <= 20 {
                    let at = |(s, r): (usize, usize)| format!("{} row {r}", m.shards[s].file);
                    r.problems.push(format!("id {id} appears twice: {} and {}", at(earlier), at((i, row))));
                }
            }
            match shard.validate_row(row, &m) {
                Ok(()) => {
                    counts[shard.row(row).bucket as usize] += 1;
                    sound.push(row);
                }
                Err(e) => {
                    bad += 1;
                    if bad <= 20 {
                        r.problems.push(e.to_string());
                    }
                }
            }
        }
        // values must be finite, and the bits the BSQ of the stored latent (what training re-quantises
        // with flips)
        // (`true`: bits that are not their latent's BSQ; `false`: a value that is not finite, or f32)
        let dtype =
            m.conditions.text.as_ref().map_or(String::new(), |t| serde_json::to_string(&t.dtype).unwrap_or_default());
        let exponent = crate::reader::text_non_finite_exponent(&m);
        let mismatched: Vec<(bool, String)> = sound
            .par_iter()
            .filter_map(|&row| {
                let rr = shard.row(row);
                // (f32 embeddings stored where the manifest says 16-bit ones: a writer's usual slip)
                let as_f32 = |column: &str, non_finite: Option<u16>| {
                    let bytes = match column {
                        format::COL_TEXT => rr.text_emb,
                        format::COL_TEXT_SHORT => rr.text_emb_short,
                        _ => None,
                    };
                    bytes.is_some_and(|t| crate::reader::looks_like_f32(t, non_finite))
                };
                let at = format!("{}: row {row} (id {})", path.display(), rr.id);
                if let Some((column, i)) = crate::reader::non_finite(&rr, &m) {
                    let hint = match as_f32(column, Some(exponent)) {
                        true => format!(" (its bytes read as f32 values: f32 where the manifest says {dtype}?)"),
                        false => String::new(),
                    };
                    let found = format!("a NaN or an infinity at value {i}{hint}");
                    return Some((false, format!("{at}, column `{column}`: expected finite values, found {found}")));
                }
                if let Some(column) = [format::COL_TEXT, format::COL_TEXT_SHORT].into_iter().find(|c| as_f32(c, None)) {
                    return Some((
                        false,
                        format!(
                            "{at}, column `{column}`: expected {dtype} values, found f32 ones (every other 16-bit \
                             value is an f32's low half, its low bits zero): f32 where the manifest says {dtype}?"
                        ),
                    ));
                }
                let ((t, b, res), n) = bsq_mismatch(&rr, &m.schedules[rr.bucket as usize], m.d as usize)?;
                Some((
                    true,
                    format!(
                        "{} row {row} (id {}): {n} bits differ from the multi-scale BSQ of the stored latent (first: \
                     token {t}, bit {b}, residual {res:e}, given the row's bits of earlier scales)",
                        path.display(),
                        rr.id
                    ),
                ))
            })
            .collect();
        let unlike = mismatched.iter().filter(|(bsq, _)| *bsq).count();
        if mismatched.len() > 20 {
            r.unlisted += mismatched.len() - 20;
            let non_finite = mismatched.len() - unlike;
            r.notes.push(format!(
                "{}: {non_finite} rows with values not finite (or f32 where 16-bit ones are declared) and {unlike} \
                 whose bits differ from their latent's BSQ ({} not listed)",
                path.display(),
                mismatched.len() - 20
            ));
        }
        // (most rows wrong is a convention of the writer's, not damage)
        if m.columns().latent && unlike >= 2 && unlike * 2 > sound.len() && !r.notes.iter().any(|n| n == BSQ_HINT) {
            r.notes.push(BSQ_HINT.to_string());
        }
        r.problems.extend(mismatched.into_iter().take(20).map(|(_, p)| p));
        if bad > 20 {
            r.unlisted += bad - 20;
            r.notes.push(format!("{}: {} more bad rows not listed", path.display(), bad - 20));
        }
        if bad == 0 && counts != entry.bucket_rows {
            r.problems.push(format!(
                "{}: rows per bucket are {counts:?}, manifest shards[{i}].bucket_rows says {:?}",
                path.display(),
                entry.bucket_rows
            ));
        }
    }
    if repeated > 20 {
        r.unlisted += repeated - 20;
        r.notes.push(format!("{} more repeated ids not listed", repeated - 20));
    }
    // a shard the manifest does not list is never read: its rows would be lost without a word
    match m.unlisted_shards(dir) {
        Ok(stray) => r.problems.extend(
            stray.iter().map(|p| format!("{}: a shard file manifest.json does not list (never read)", p.display())),
        ),
        Err(e) => r.problems.push(e.to_string()),
    }
    // (not the dataset's: it is whole without them, and they take disk space)
    if let Ok(staged) = crate::writer::staged_files(dir).map_err(|e| r.problems.push(e.to_string())) {
        if let Some(first) = staged.first() {
            r.notes.push(format!(
                "{}: {} staged by a dataset writer ({first}{}): one writing into this folder now, or one killed, \
                 whose files the next write here removes (never read; delete them if no writer runs)",
                dir.display(),
                match staged.len() {
                    1 => "a file".to_string(),
                    n => format!("{n} files"),
                },
                if staged.len() > 1 { ", …" } else { "" }
            ));
        }
    }
    for s in m.schedules.iter().filter(|s| s.scales.len() > crate::schedule::MAX_MODEL_SCALES) {
        r.notes.push(format!(
            "schedule `{}` has {} scales: Infinity models train on at most {} (upstream's lvl_embed), so \
             `infinity train` refuses this dataset",
            s.name,
            s.scales.len(),
            crate::schedule::MAX_MODEL_SCALES
        ));
    }
    if m.conditions.class.is_none() && m.conditions.text.is_none() {
        r.notes.push(
            "the dataset has no condition (manifest conditions.class or conditions.text): no model trains on it; \
             an unconditional dataset is one class (`\"class\": {\"num_classes\": 1}`, every class_label 0)"
                .to_string(),
        );
    }
    if m.total_rows == 0 {
        r.problems
            .push(format!("{}: the dataset has no rows (manifest total_rows = 0): nothing to train on", dir.display()));
    }
    if let Some(f) = &m.tokenizer.file {
        if m.tokenizer.name == crate::tokenizer::TOKENIZER_NAME {
            if let Err(e) = crate::tokenizer::of_dataset(dir, &m) {
                r.problems.push(e.to_string());
            }
        } else if !dir.join(f).exists() {
            r.problems.push(format!("{}: tokenizer file named in the manifest is missing", dir.join(f).display()));
        }
    }
    r
}

/// `n` of the places `0..total`, evenly spread (all of them where `n ≥ total`): a packed dataset's rows
/// are in class order, so its first rows are of its first class.
fn spread(total: usize, n: usize) -> impl Iterator<Item = usize> {
    let n = n.min(total);
    (0..n).map(move |i| (i as u128 * total as u128 / n as u128) as usize)
}

/// Per-scale bit statistics of each bucket (of up to `max_rows` of its rows, spread over it): how often
/// bits are 1, averaged and over the worst channels; and the classes of `max_rows` rows spread over the
/// dataset.
pub fn stats(ds: &Dataset, max_rows: u64) -> Result<String> {
    let m = &ds.manifest;
    let d = m.d as usize;
    let mut out = String::new();
    let by_bucket = ds.rows_by_bucket();
    for (b, rows) in by_bucket.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let sched = &m.schedules[b];
        let hw = sched.hw();
        // ones[s][c]: count of 1 bits of channel c at scale s
        let mut ones = vec![vec![0u64; d]; hw.len()];
        let n = rows.len().min(max_rows as usize);
        let mut bits = vec![0u8; sched.num_tokens() * d];
        for g in spread(rows.len(), n).map(|i| rows[i]) {
            ds.validate_row(g)?;
            format::unpack_bits(ds.row(g).bits, d, &mut bits);
            let mut off = 0;
            for (s, &(h, w)) in hw.iter().enumerate() {
                for tok in bits[off * d..(off + h * w) * d].chunks_exact(d) {
                    for (c, &bit) in tok.iter().enumerate() {
                        ones[s][c] += bit as u64;
                    }
                }
                off += h * w;
            }
        }
        let _ = writeln!(out, "bucket {b} `{}`: {n} of {} rows{}", sched.name, rows.len(), spread_note(n, rows.len()));
        let _ = writeln!(out, "  scale  h×w      P(bit=1)  min channel  max channel  entropy/bit");
        for (s, &(h, w)) in hw.iter().enumerate() {
            let total = (n * h * w) as f64;
            let p: Vec<f64> = ones[s].iter().map(|&o| o as f64 / total).collect();
            let mean = p.iter().sum::<f64>() / d as f64;
            let (lo, hi) = p.iter().fold((1.0f64, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let ent = p.iter().map(|&x| binary_entropy(x)).sum::<f64>() / d as f64;
            let _ =
                writeln!(out, "  {s:>5}  {:<8} {mean:>8.3}  {lo:>11.3}  {hi:>11.3}  {ent:>11.3}", format!("{h}×{w}"));
        }
    }
    if let Some(c) = &m.conditions.class {
        let mut hist = vec![0u64; c.num_classes as usize];
        let (total, n) = (ds.num_rows() as usize, ds.num_rows().min(max_rows) as usize);
        for g in spread(total, n) {
            ds.validate_row(g as u64)?; // (a label past num_classes would index past the histogram)
            if let Some(l) = ds.row(g as u64).class_label {
                hist[l as usize] += 1;
            }
        }
        let _ = writeln!(out, "class histogram ({n} of {total} rows{}): {hist:?}", spread_note(n, total));
    }
    if let Some(t) = &m.conditions.text {
        // tokens per caption (16-bit features of `width` channels each): how much of the bound they use
        let per_token = t.width as usize * 2;
        let (total, n) = (ds.num_rows() as usize, ds.num_rows().min(max_rows) as usize);
        let (mut long, mut short) = (Vec::new(), Vec::new());
        for g in spread(total, n) {
            ds.validate_row(g as u64)?;
            let row = ds.row(g as u64);
            long.extend(row.text_emb.map(|e| e.len() / per_token));
            short.extend(row.text_emb_short.map(|e| e.len() / per_token));
        }
        let tokens = |v: &[usize]| match (v.iter().min(), v.iter().max()) {
            (Some(lo), Some(hi)) => {
                format!("min {lo}, mean {:.1}, max {hi}", v.iter().sum::<usize>() as f64 / v.len() as f64)
            }
            _ => "none".to_string(),
        };
        let (bound, note) = (t.max_tokens, spread_note(n, total));
        let _ = writeln!(out, "caption tokens ({n} of {total} rows{note}): {} (bound {bound})", tokens(&long));
        if t.short_caption {
            let _ =
                writeln!(out, "short caption tokens ({} of those {n} rows have one): {}", short.len(), tokens(&short));
        }
    }
    Ok(out)
}

/// How rows were picked, where not all were.
fn spread_note(n: usize, total: usize) -> &'static str {
    if n < total {
        ", spread over them"
    } else {
        ""
    }
}

fn binary_entropy(p: f64) -> f64 {
    if p <= 0.0 || p >= 1.0 {
        0.0
    } else {
        -(p * p.log2() + (1.0 - p) * (1.0 - p).log2())
    }
}

/// Decode `n` rows spread over the dataset with its built-in tokenizer into one PNG grid.
pub fn sample_grid(ds: &Dataset, n: usize, path: &Path) -> Result<()> {
    let m = &ds.manifest;
    let tok = crate::tokenizer::of_dataset(ds.dir(), m)?.ok_or_else(|| {
        crate::DataError::Config(format!(
            "{}: stats --png needs the built-in tokenizer's file; this dataset uses `{}`{}",
            ds.dir().display(),
            m.tokenizer.name,
            if m.tokenizer.file.is_none() { " and names no file" } else { "" }
        ))
    })?;
    let d = m.d as usize;
    let images: Vec<Image> = spread(ds.num_rows() as usize, n)
        .map(|g| g as u64)
        .map(|g| {
            ds.validate_row(g)?;
            let row = ds.row(g);
            let sched = &m.schedules[row.bucket as usize];
            let mut bits = vec![0u8; sched.num_tokens() * d];
            format::unpack_bits(row.bits, d, &mut bits);
            Ok(tok.decode_bits(&bits, &sched.hw()))
        })
        .collect::<Result<_>>()?;
    save_grid(&images, 8, path)
}

/// Tile images into a grid (PNG or JPEG by `path`'s extension), each cell enlarged by an integer factor
/// to at least 96 px; written atomically (an encoder's error leaves no empty or partial file).
pub fn save_grid(images: &[Image], cols: usize, path: &Path) -> Result<()> {
    save_grid_noted(images, cols, path, &[])
}

/// [`save_grid`], with `notes` (keyword, UTF-8 text) as the PNG's iTXt chunks: what made the grid, read
/// back by PIL's `Image.open(f).text` or `exiftool`. A JPEG keeps none.
pub fn save_grid_noted(images: &[Image], cols: usize, path: &Path, notes: &[(&str, String)]) -> Result<()> {
    let err = |e: String| crate::DataError::Image { path: path.into(), detail: e };
    let format = grid_format(path)?;
    if images.is_empty() {
        return Err(err("no images to write".into()));
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    let grid = grid_image(images, cols);
    // (JPEG's sides are 16-bit: its encoder's own error says nothing of why)
    const JPEG_MAX: u32 = 65_535;
    if format == image::ImageFormat::Jpeg && grid.width().max(grid.height()) > JPEG_MAX {
        return Err(err(format!(
            "a grid of {}×{} px, over JPEG's {JPEG_MAX} px a side: write a .png, or fewer samples a row",
            grid.width(),
            grid.height()
        )));
    }
    match format {
        image::ImageFormat::Png => {
            let mut enc = png::Encoder::new(&mut bytes, grid.width(), grid.height());
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            for (keyword, text) in notes {
                enc.add_itxt_chunk(keyword.to_string(), text.clone()).map_err(|e| err(e.to_string()))?;
            }
            let mut w = enc.write_header().map_err(|e| err(e.to_string()))?;
            w.write_image_data(grid.as_raw()).map_err(|e| err(e.to_string()))?;
            w.finish().map_err(|e| err(e.to_string()))?;
        }
        _ => grid.write_to(&mut bytes, format).map_err(|e| err(e.to_string()))?,
    }
    crate::manifest::write_atomic(path, bytes.get_ref())
}

/// The format [`save_grid`] writes `path` in: PNG or JPEG by its extension, else an error, so that a
/// command can refuse the name before its work rather than after.
pub fn grid_format(path: &Path) -> Result<image::ImageFormat> {
    use image::ImageFormat::{Jpeg, Png};
    match image::ImageFormat::from_path(path) {
        Ok(f @ (Png | Jpeg)) => Ok(f),
        _ => Err(crate::DataError::Image {
            path: path.into(),
            detail: "an image grid is written as .png or .jpg (by the file name's extension)".into(),
        }),
    }
}

/// The grid of [`save_grid`] as an RGB image (`images` must not be empty).
pub fn grid_image(images: &[Image], cols: usize) -> image::RgbImage {
    let (ch, cw) = images.iter().fold((0, 0), |(h, w), i| (h.max(i.h), w.max(i.w)));
    let zoom = 96usize.div_ceil(ch.max(cw).max(1)).max(1);
    let cols = cols.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(cols);
    let pad = 2;
    let (gw, gh) = (cols * (cw * zoom + pad) + pad, rows * (ch * zoom + pad) + pad);
    let mut canvas = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for (k, img) in images.iter().enumerate() {
        let rgb = img.to_rgb8();
        let (ox, oy) = (pad + (k % cols) * (cw * zoom + pad), pad + (k / cols) * (ch * zoom + pad));
        for y in 0..img.h * zoom {
            for x in 0..img.w * zoom {
                let i = 3 * ((y / zoom) * img.w + x / zoom);
                canvas.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb([rgb[i], rgb[i + 1], rgb[i + 2]]));
            }
        }
    }
    canvas
}
