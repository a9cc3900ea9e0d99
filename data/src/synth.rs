//! `infinity data synth`: a procedural image dataset with class and caption conditions, tokenized with
//! the built-in tokenizer. Every row is a pure function of (seed, id), so any size from a few hundred
//! to millions of rows is reproducible and generated in parallel.
//!
//! An image is one anti-aliased shape on a dark gradient background. Attributes: shape (4), colour (6),
//! size (2), position (3×3 grid of regions). The class is shape × colour (24 classes, like VAR's class
//! conditioning); the caption is a variable-length sequence of words ("a large red circle top left",
//! size and position sometimes left out) whose text embedding is one fixed vector per word plus a small
//! positional term, so text conditioning can be learned. Each row has a short caption too ("a red circle").

use std::path::Path;

use half::f16;
use rand::Rng;

use crate::build::{encode_row, fit_tokenizer, measure_fit, write_parallel, TokenizerFit};
use crate::error::{DataError, Result};
use crate::format::{BIT_ORDER, FORMAT_NAME, FORMAT_VERSION};
use crate::loader::plan::keyed_rng;
use crate::manifest::{ClassInfo, Conditions, LatentInfo, Manifest, TextDtype, TextInfo};
use crate::schedule::{Catalog, ScaleSchedule};
use crate::tokenizer::{Image, PatchTokenizer, TOKENIZER_FILE};
use crate::writer::{DatasetWriter, RowData, WriterOptions};

pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "cross"];
pub const COLOURS: [(&str, [f32; 3]); 6] = [
    ("red", [0.92, 0.16, 0.12]),
    ("green", [0.15, 0.80, 0.22]),
    ("blue", [0.18, 0.35, 0.97]),
    ("yellow", [0.96, 0.86, 0.12]),
    ("magenta", [0.88, 0.22, 0.82]),
    ("cyan", [0.12, 0.86, 0.88]),
];
pub const SIZES: [&str; 2] = ["small", "large"];
const ROWS_WORDS: [&str; 3] = ["top", "middle", "bottom"];
const COLS_WORDS: [&str; 3] = ["left", "center", "right"];

/// Seed of the word-embedding table: fixed, so every synth dataset shares one text "encoder".
const TEXT_ENCODER_SEED: u64 = 0x7e47_e5c0;

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub rows: u64,
    pub seed: u64,
    /// Bits per token.
    pub d: usize,
    /// Pixel budget of the schedules (`demo4`, `demo5`, `0.06M`, ...).
    pub budget: String,
    /// Tokenizer patch side in pixels.
    pub patch: usize,
    /// Store latents and bits at twice the schedule's sides, for a model with spatial patchify
    /// ([`ScaleSchedule::patchified`]).
    pub spatial_patchify: bool,
    /// Aspect-ratio templates and their share of rows.
    pub templates: Vec<(String, f64)>,
    /// Text embedding width (upstream `Ct5`).
    pub text_width: usize,
    /// Rows the tokenizer is fitted on (or measured on, with `tokenizer`).
    pub fit_rows: usize,
    /// Reuse this tokenizer instead of fitting one (a validation split must share the training
    /// dataset's tokenizer).
    pub tokenizer: Option<std::path::PathBuf>,
    pub writer: WriterOptions,
    /// Provenance written into the manifest.
    pub created_by: String,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            rows: 4096,
            seed: 0,
            d: 16,
            budget: "demo5".into(),
            patch: 4,
            spatial_patchify: false,
            templates: vec![("1.000".into(), 0.75), ("0.666".into(), 0.25)],
            text_width: 32,
            fit_rows: 512,
            tokenizer: None,
            writer: WriterOptions::default(),
            created_by: "infinity data synth".into(),
        }
    }
}

/// The attributes of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub shape: usize,
    pub colour: usize,
    pub size: usize,
    /// Region of the centre: `(row, col)` in a 3×3 grid.
    pub region: (usize, usize),
    /// Index into the options' templates.
    pub template: usize,
    pub words: Vec<&'static str>,
    cx: f32,
    cy: f32,
    radius: f32,
    background: [[f32; 3]; 2],
}

impl Sample {
    pub fn class_label(&self) -> i32 {
        (self.shape * COLOURS.len() + self.colour) as i32
    }

    pub fn caption(&self) -> String {
        self.words.join(" ")
    }

    /// The short caption: "a red circle", the size and the position left out (upstream's datasets pair
    /// a long caption with a short one, `text`).
    pub fn short_words(&self) -> [&'static str; 3] {
        ["a", COLOURS[self.colour].0, SHAPES[self.shape]]
    }

    /// Draw the attributes of row `id`.
    pub fn draw(seed: u64, id: u64, templates: &[(String, f64)]) -> Sample {
        let mut rng = keyed_rng(seed, &[id]);
        let total: f64 = templates.iter().map(|t| t.1).sum();
        let mut pick = rng.random::<f64>() * total;
        let template = templates.iter().position(|t| {
            pick -= t.1;
            pick < 0.0
        });
        let template = template.unwrap_or(templates.len() - 1);
        let (shape, colour, size) = (rng.random_range(0..4), rng.random_range(0..6), rng.random_range(0..2));
        let radius = if size == 0 { rng.random_range(0.14..0.2) } else { rng.random_range(0.26..0.34) };
        // centre in unit coordinates, kept inside the frame
        let cx = rng.random_range(radius..1.0 - radius);
        let cy = rng.random_range(radius..1.0 - radius);
        let region = (((cy * 3.0) as usize).min(2), ((cx * 3.0) as usize).min(2));
        let bg = |rng: &mut rand_chacha::ChaCha8Rng| {
            [rng.random_range(0.0..0.25), rng.random_range(0.0..0.25), rng.random_range(0.0..0.3)]
        };
        let background = [bg(&mut rng), bg(&mut rng)];
        let mut words = vec!["a"];
        if rng.random_bool(0.7) {
            words.push(SIZES[size]);
        }
        words.push(COLOURS[colour].0);
        words.push(SHAPES[shape]);
        if rng.random_bool(0.7) {
            words.push(ROWS_WORDS[region.0]);
            words.push(COLS_WORDS[region.1]);
        }
        Sample { shape, colour, size, region, template, words, cx, cy, radius, background }
    }

    /// Render at `h×w` pixels with 4×4 supersampling.
    pub fn render(&self, h: usize, w: usize) -> Image {
        let mut img = Image::new(h, w);
        let n = h * w;
        let side = h.min(w) as f32;
        let (cx, cy, r) = (self.cx * w as f32, self.cy * h as f32, self.radius * side);
        let colour = COLOURS[self.colour].1;
        const SS: usize = 4;
        for y in 0..h {
            let t = y as f32 / (h.max(2) - 1) as f32;
            for x in 0..w {
                let mut hits = 0;
                for sy in 0..SS {
                    for sx in 0..SS {
                        let u = (x as f32 + (sx as f32 + 0.5) / SS as f32 - cx) / r;
                        let v = (y as f32 + (sy as f32 + 0.5) / SS as f32 - cy) / r;
                        hits += self.inside(u, v) as usize;
                    }
                }
                let a = hits as f32 / (SS * SS) as f32;
                for (c, fg) in colour.iter().enumerate() {
                    let bg = self.background[0][c] * (1.0 - t) + self.background[1][c] * t;
                    img.data[c * n + y * w + x] = (bg * (1.0 - a) + fg * a) * 2.0 - 1.0;
                }
            }
        }
        img
    }

    /// Is the point `(u, v)` (in radii from the centre, y down) inside the shape?
    fn inside(&self, u: f32, v: f32) -> bool {
        match self.shape {
            0 => u * u + v * v <= 1.0,
            1 => u.abs().max(v.abs()) <= 0.82,
            2 => {
                // apex up at (0, -1), base at v = 0.8 from u = -0.95 to 0.95
                let edge = |ax: f32, ay: f32, bx: f32, by: f32| (bx - ax) * (v - ay) - (by - ay) * (u - ax);
                let (e0, e1, e2) =
                    (edge(0.0, -1.0, 0.95, 0.8), edge(0.95, 0.8, -0.95, 0.8), edge(-0.95, 0.8, 0.0, -1.0));
                (e0 >= 0.0 && e1 >= 0.0 && e2 >= 0.0) || (e0 <= 0.0 && e1 <= 0.0 && e2 <= 0.0)
            }
            _ => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        }
    }
}

/// The `encoder` a manifest names for [`embed_caption`] features.
pub fn text_encoder_name() -> String {
    format!("synth word table (seed {TEXT_ENCODER_SEED:#x}, {} words)", vocabulary().len())
}

/// Vocabulary of the captions, in a fixed order.
pub fn vocabulary() -> Vec<&'static str> {
    let mut v = vec!["a"];
    v.extend(SIZES);
    v.extend(COLOURS.iter().map(|c| c.0));
    v.extend(SHAPES);
    v.extend(ROWS_WORDS);
    v.extend(COLS_WORDS);
    v
}

/// Text embedding `[n_words, width]` of a caption as f16 bytes: a fixed N(0, 1) vector per word plus
/// 0.25·sin/cos of the word's position.
pub fn embed_caption(words: &[&str], width: usize) -> Vec<u8> {
    let vocab = vocabulary();
    let mut out = Vec::with_capacity(words.len() * width * 2);
    for (pos, w) in words.iter().enumerate() {
        let idx = vocab.iter().position(|v| v == w).expect("caption words come from the vocabulary");
        let mut rng = keyed_rng(TEXT_ENCODER_SEED, &[idx as u64]);
        for k in 0..width {
            // Box-Muller from two uniforms keeps the table independent of rand's distribution internals.
            let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            let g = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            let freq = 1.0 / 10f32.powf(k as f32 / width as f32);
            let p = if k % 2 == 0 { (pos as f32 * freq).sin() } else { (pos as f32 * freq).cos() };
            out.extend_from_slice(&f16::from_f32(g + 0.25 * p).to_le_bytes());
        }
    }
    out
}

/// Generate the dataset into `dir`. Returns the manifest and the tokenizer's measured fit.
pub fn synth(dir: &Path, opts: &SynthOptions) -> Result<(Manifest, TokenizerFit)> {
    if opts.rows == 0 || opts.templates.is_empty() {
        return Err(DataError::Config("synth: need at least one row and one template".into()));
    }
    // checked here, before the tokenizer or the manifest would report them less directly
    crate::tokenizer::check_patch_side(opts.patch)
        .map_err(|what| DataError::Config(format!("synth: the tokenizer's {what}")))?;
    for (what, value) in [
        ("the text embedding width", opts.text_width),
        ("the rows the tokenizer is fitted or measured on", opts.fit_rows),
    ] {
        if value == 0 {
            return Err(DataError::Config(format!("synth: {what} must be at least 1, found 0")));
        }
    }
    let catalog = Catalog::upstream();
    let schedules: Vec<ScaleSchedule> =
        opts.templates.iter().map(|(t, _)| catalog.schedule(t, &opts.budget)).collect::<Result<_>>()?;
    // (`0.5` and `0.500` are one template: two shares of it are one bucket, given once)
    if let Some((i, s)) = schedules.iter().enumerate().find(|(i, s)| schedules[..*i].iter().any(|o| o.name == s.name)) {
        return Err(DataError::Config(format!(
            "synth: the template {:?} is given twice (as {}: one template, given once with its share)",
            opts.templates[i].0, s.h_div_w_template
        )));
    }
    let schedules: Vec<ScaleSchedule> =
        schedules.into_iter().map(|s| if opts.spatial_patchify { s.patchified() } else { s }).collect();
    let pixels = |s: &ScaleSchedule| {
        let (h, w) = s.latent_hw();
        (h * opts.patch, w * opts.patch)
    };

    // (the folder first: one that holds a dataset, or another writer's, is said before any work)
    let claim = DatasetWriter::claim(dir, opts.writer.clone())?;
    let fit_n = (opts.fit_rows as u64).min(opts.rows);
    let fit_images: Vec<(Image, ScaleSchedule)> = (0..fit_n)
        .map(|id| {
            let s = Sample::draw(opts.seed, id, &opts.templates);
            let sched = &schedules[s.template];
            let (h, w) = pixels(sched);
            (s.render(h, w), sched.clone())
        })
        .collect();
    let (tok, fit) = match &opts.tokenizer {
        None => fit_tokenizer(&fit_images, &[], opts.patch, opts.d)?,
        Some(p) => {
            let tok = PatchTokenizer::load(p)?;
            if tok.d != opts.d || tok.patch != opts.patch {
                return Err(DataError::Config(format!(
                    "synth: {} has d = {}, patch = {}; the options ask for d = {}, patch = {}",
                    p.display(),
                    tok.d,
                    tok.patch,
                    opts.d,
                    opts.patch
                )));
            }
            let fit = measure_fit(&tok, &fit_images)?;
            (tok, fit)
        }
    };
    let header = Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        d: opts.d as u32,
        bit_order: BIT_ORDER.into(),
        tokenizer: tok.manifest_info(Some(&fit)),
        conditions: Conditions {
            class: Some(ClassInfo {
                num_classes: (SHAPES.len() * COLOURS.len()) as u32,
                names: SHAPES.iter().flat_map(|s| COLOURS.iter().map(move |c| format!("{} {s}", c.0))).collect(),
            }),
            text: Some(TextInfo {
                width: opts.text_width as u32,
                dtype: TextDtype::F16,
                max_tokens: 8,
                encoder: text_encoder_name(),
                short_caption: true,
            }),
            caption: true,
        },
        latent: Some(LatentInfo { dtype: "f16".into(), layout: "d,H,W".into() }),
        schedules: schedules.clone(),
        shards: vec![],
        total_rows: 0,
        created_by: opts.created_by.clone(),
    };
    let mut writer = claim.start(header)?;
    tok.save(&writer.file(TOKENIZER_FILE))?;
    let make = |id: u64| -> Result<Option<RowData>> {
        let s = Sample::draw(opts.seed, id, &opts.templates);
        let sched = &schedules[s.template];
        let (h, w) = pixels(sched);
        let (latent, bits) = encode_row(&tok, &s.render(h, w), sched)?;
        Ok(Some(RowData {
            id,
            bucket: s.template as u16,
            bits,
            latent: Some(latent),
            class_label: Some(s.class_label()),
            text_emb: Some(embed_caption(&s.words, opts.text_width)),
            text_emb_short: Some(embed_caption(&s.short_words(), opts.text_width)),
            caption: Some(s.caption()),
        }))
    };
    let started = std::time::Instant::now();
    write_parallel(&mut writer, opts.rows, make, |done| {
        if opts.rows >= 100_000 && done % 65_536 < 2048 {
            tracing::info!(
                "synth: {done}/{} rows ({:.0} rows/s)",
                opts.rows,
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    })?;
    Ok((writer.finish()?, fit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_is_deterministic_and_caption_matches_attributes() {
        let t = SynthOptions::default().templates;
        assert_eq!(Sample::draw(3, 17, &t), Sample::draw(3, 17, &t));
        assert_ne!(Sample::draw(3, 17, &t), Sample::draw(4, 17, &t));
        for id in 0..200 {
            let s = Sample::draw(9, id, &t);
            assert!(s.words.contains(&COLOURS[s.colour].0) && s.words.contains(&SHAPES[s.shape]));
            assert!((0..24).contains(&s.class_label()));
            assert_eq!(embed_caption(&s.words, 8).len(), s.words.len() * 8 * 2);
        }
    }

    #[test]
    fn render_puts_the_colour_at_the_centre() {
        let t = SynthOptions::default().templates;
        for id in 0..20 {
            let s = Sample::draw(1, id, &t);
            let img = s.render(32, 32);
            let (x, y) = ((s.cx * 32.0) as usize, (s.cy * 32.0) as usize);
            let px: Vec<f32> = (0..3).map(|c| (img.data[c * 1024 + y * 32 + x] + 1.0) / 2.0).collect();
            let want = COLOURS[s.colour].1;
            for c in 0..3 {
                assert!((px[c] - want[c]).abs() < 0.05, "id {id}: pixel {px:?} vs {want:?}");
            }
        }
    }
}
