//! The built-in tokenizer: a linear patch autoencoder fitted by PCA, followed by upstream's
//! multi-scale residual BSQ. It lets the repo make real bit datasets with no external model.
//!
//! Encoding an image `[3, Hpx, Wpx]` (values in [-1, 1]):
//! 1. cut it into non-overlapping `p×p` patches, each a vector of `P = 3·p²` values, layout `(c, y, x)`;
//! 2. `latent[c, i, j] = g_c · B_c · (patch_ij − mean)`, with `B: [d, P]` the top-`d` principal directions
//!    of the training patches (orthonormal rows) and per-channel gains `g_c = scale / σ_c^whiten`
//!    (`σ_c` the standard deviation of coordinate `c`; `scale` and `whiten` chosen for the best BSQ round
//!    trip: BSQ spends the same ±1/√d on every channel, so partly whitening stops it from spending most of
//!    its error on low-variance channels);
//! 3. multi-scale residual BSQ over the schedule (`kernels::bsq::encode_multiscale`) gives the bits.
//!
//! Decoding maps the summed codes `[d, H, W]` back: `patch_ij = mean + Σ_c B_c · code_cij / g_c`.

use std::collections::HashMap;
use std::path::Path;

use infinity_kernels::bsq;
use nalgebra::{DMatrix, SymmetricEigen};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::build::TokenizerFit;
use crate::error::{DataError, Result};
use crate::manifest::{Manifest, TokenizerInfo};

pub const TOKENIZER_NAME: &str = "patch-pca-bsq";
pub const TOKENIZER_FILE: &str = "tokenizer.safetensors";

/// What a tokenizer file is, as its errors name it.
fn file_format() -> String {
    format!("{TOKENIZER_NAME} tokenizer (safetensors)")
}

/// An RGB image, channel-major `[3, h, w]`, values in [-1, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Image {
    pub fn new(h: usize, w: usize) -> Image {
        Image { h, w, data: vec![0.0; 3 * h * w] }
    }

    /// 8-bit RGB, row-major interleaved, as image files store it.
    pub fn to_rgb8(&self) -> Vec<u8> {
        let n = self.h * self.w;
        let mut out = Vec::with_capacity(3 * n);
        for i in 0..n {
            for c in 0..3 {
                out.push(((self.data[c * n + i].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8);
            }
        }
        out
    }

    pub fn from_rgb8(h: usize, w: usize, rgb: &[u8]) -> Image {
        let n = h * w;
        let mut img = Image::new(h, w);
        for i in 0..n {
            for c in 0..3 {
                img.data[c * n + i] = rgb[3 * i + c] as f32 / 127.5 - 1.0;
            }
        }
        img
    }
}

/// PSNR in dB between two images, both mapped to [0, 1].
pub fn psnr(a: &Image, b: &Image) -> f64 {
    assert_eq!((a.h, a.w), (b.h, b.w), "psnr: image sizes differ");
    let mse: f64 =
        a.data.iter().zip(&b.data).map(|(x, y)| (((x - y) / 2.0) as f64).powi(2)).sum::<f64>() / a.data.len() as f64;
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatchTokenizer {
    /// Patch side in pixels (the tokenizer's stride).
    pub patch: usize,
    /// Latent channels = bits per token.
    pub d: usize,
    /// `[P]` mean patch.
    pub mean: Vec<f32>,
    /// `[d, P]` principal directions, orthonormal rows, by decreasing variance.
    pub basis: Vec<f32>,
    /// `[d]` standard deviation of each principal coordinate over the fitting patches.
    pub sigma: Vec<f32>,
    /// Overall latent units per (whitened) coordinate.
    pub scale: f32,
    /// Whitening exponent in [0, 1]: 0 keeps PCA coordinates, 1 makes every channel unit variance.
    pub whiten: f32,
}

/// The largest patch side a tokenizer takes, in pixels (a patch is one token: far beyond any real one).
const MAX_PATCH: usize = 64;

/// A patch side a tokenizer can have, 1 to [`MAX_PATCH`] pixels; else what is wrong, in words
/// (`patch side must be …`), for the builders to check before they start.
pub fn check_patch_side(patch: usize) -> std::result::Result<(), String> {
    match (1..=MAX_PATCH).contains(&patch) {
        true => Ok(()),
        false => Err(format!("patch side must be 1 to {MAX_PATCH} pixels, found {patch}")),
    }
}

/// The values of a patch (`3·patch²`), where `patch` and `d` fit together: a side of 1 to [`MAX_PATCH`]
/// pixels, `d` in `1..=3·patch²`; else what is wrong, in words. `fit` and `load` both check this way.
fn patch_len(patch: usize, d: usize) -> std::result::Result<usize, String> {
    check_patch_side(patch).map_err(|what| format!("the {what}"))?;
    let p_len = 3 * patch * patch;
    match (1..=p_len).contains(&d) {
        true => Ok(p_len),
        false => Err(format!("d = {d} must be in 1..={p_len} (3·patch²) for patch {patch}")),
    }
}

impl PatchTokenizer {
    fn patch_len(&self) -> usize {
        3 * self.patch * self.patch
    }

    /// `[d]` latent units per principal coordinate.
    pub fn gains(&self) -> Vec<f32> {
        self.sigma.iter().map(|s| self.scale / s.max(1e-6).powf(self.whiten)).collect()
    }

    /// Fit mean and basis by PCA over every patch of `images`; `scale` starts at 1/σ of the first
    /// coordinate with no whitening, and is tuned by [`PatchTokenizer::calibrate`].
    pub fn fit(images: &[Image], patch: usize, d: usize) -> Result<PatchTokenizer> {
        let p_len = patch_len(patch, d).map_err(|what| DataError::Config(format!("tokenizer: {what}")))?;
        if images.is_empty() {
            return Err(DataError::Config("tokenizer: no images to fit on".into()));
        }
        // Second moment accumulated as XᵀX over chunks of patches (one GEMM per chunk), centred below.
        const CHUNK: usize = 4096;
        let mut sum = vec![0f64; p_len];
        let mut cov = DMatrix::<f64>::zeros(p_len, p_len);
        let mut chunk: Vec<f64> = Vec::with_capacity(CHUNK * p_len);
        let mut n = 0usize;
        let mut v = vec![0f32; p_len];
        let flush = |chunk: &mut Vec<f64>, cov: &mut DMatrix<f64>| {
            let x = DMatrix::from_row_slice(chunk.len() / p_len, p_len, chunk);
            *cov += x.transpose() * &x;
            chunk.clear();
        };
        for img in images {
            for (py, px) in patch_grid(img, patch)? {
                extract_patch(img, patch, py, px, &mut v);
                for (s, &x) in sum.iter_mut().zip(&v) {
                    *s += x as f64;
                }
                chunk.extend(v.iter().map(|&x| x as f64));
                n += 1;
                if chunk.len() == CHUNK * p_len {
                    flush(&mut chunk, &mut cov);
                }
            }
        }
        if !chunk.is_empty() {
            flush(&mut chunk, &mut cov);
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
        let m = nalgebra::DVector::from_column_slice(&mean);
        cov /= n as f64;
        cov.ger(-1.0, &m, &m, 1.0);
        let eig = SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..p_len).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let mut basis = Vec::with_capacity(d * p_len);
        for &k in &order[..d] {
            let col = eig.eigenvectors.column(k);
            // Eigenvectors have no sign of their own: fix one so fitting is reproducible.
            let pivot = col.iter().copied().fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
            let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
            basis.extend(col.iter().map(|&x| (x * sign) as f32));
        }
        let sigma: Vec<f32> = order[..d].iter().map(|&k| eig.eigenvalues[k].max(1e-12).sqrt() as f32).collect();
        Ok(PatchTokenizer {
            patch,
            d,
            mean: mean.iter().map(|&x| x as f32).collect(),
            basis,
            scale: 1.0 / sigma[0],
            sigma,
            whiten: 0.0,
        })
    }

    /// Pick `whiten` from {0, ½, 1} and `scale` from a geometric grid by the mean BSQ round-trip PSNR of
    /// `images` (each with its schedule's `(h, w)` scales). Returns the best PSNR.
    pub fn calibrate(&mut self, images: &[(Image, Vec<(usize, usize)>)]) -> Result<f64> {
        let mut best = (f64::NEG_INFINITY, self.scale, self.whiten);
        for whiten in [0.0f32, 0.5, 1.0] {
            // start where the first channel has unit variance, then search ±3 octaves
            let base = self.sigma[0].powf(whiten) / self.sigma[0];
            for k in -6..=6 {
                self.whiten = whiten;
                self.scale = base * 2f32.powf(k as f32 / 2.0);
                let mut total = 0.0;
                for (img, scales) in images {
                    total += psnr(img, &self.round_trip(img, scales)?.0);
                }
                let mean = total / images.len() as f64;
                if mean > best.0 {
                    best = (mean, self.scale, whiten);
                }
            }
        }
        (self.scale, self.whiten) = (best.1, best.2);
        Ok(best.0)
    }

    /// Continuous latent `[d, H, W]` of an image whose sides are multiples of the patch.
    pub fn encode(&self, img: &Image) -> Result<Vec<f32>> {
        let grid = patch_grid(img, self.patch)?;
        let (hh, ww) = (img.h / self.patch, img.w / self.patch);
        let p_len = self.patch_len();
        let mut v = vec![0f32; p_len];
        let mut latent = vec![0f32; self.d * hh * ww];
        let gains = self.gains();
        for (t, (py, px)) in grid.enumerate() {
            extract_patch(img, self.patch, py, px, &mut v);
            for (x, m) in v.iter_mut().zip(&self.mean) {
                *x -= m;
            }
            for c in 0..self.d {
                let row = &self.basis[c * p_len..(c + 1) * p_len];
                latent[c * hh * ww + t] = gains[c] * row.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        Ok(latent)
    }

    /// Image of a latent (or of summed codes) `[d, H, W]`.
    pub fn decode(&self, latent: &[f32], hh: usize, ww: usize) -> Image {
        assert_eq!(latent.len(), self.d * hh * ww, "decode: latent is not [d={}, {hh}, {ww}]", self.d);
        let p = self.patch;
        let p_len = self.patch_len();
        let mut img = Image::new(hh * p, ww * p);
        let mut v = vec![0f32; p_len];
        let gains = self.gains();
        for t in 0..hh * ww {
            v.copy_from_slice(&self.mean);
            for c in 0..self.d {
                let z = latent[c * hh * ww + t] / gains[c];
                for (x, b) in v.iter_mut().zip(&self.basis[c * p_len..(c + 1) * p_len]) {
                    *x += z * b;
                }
            }
            let (py, px) = (t / ww, t % ww);
            let n = img.h * img.w;
            for c in 0..3 {
                for y in 0..p {
                    for x in 0..p {
                        img.data[c * n + (py * p + y) * img.w + px * p + x] = v[(c * p + y) * p + x].clamp(-1.0, 1.0);
                    }
                }
            }
        }
        img
    }

    /// Decode token-major bits `[L, d]` of a schedule.
    pub fn decode_bits(&self, bits: &[u8], scales: &[(usize, usize)]) -> Image {
        let (hh, ww) = *scales.last().expect("non-empty schedule");
        self.decode(&bsq::decode_multiscale(bits, self.d, scales), hh, ww)
    }

    /// Encode to bits and decode again: `(reconstruction, bits [L, d])`.
    pub fn round_trip(&self, img: &Image, scales: &[(usize, usize)]) -> Result<(Image, Vec<u8>)> {
        let latent = self.encode(img)?;
        let (hh, ww) = *scales.last().expect("non-empty schedule");
        let enc = bsq::encode_multiscale(&latent, self.d, scales);
        Ok((self.decode(&enc.summed_codes, hh, ww), enc.bits))
    }

    /// How a dataset's manifest names this tokenizer (saved beside it as [`TOKENIZER_FILE`]), with the
    /// quality measured on its calibration images where it was measured.
    pub fn manifest_info(&self, fit: Option<&TokenizerFit>) -> TokenizerInfo {
        TokenizerInfo {
            name: TOKENIZER_NAME.into(),
            file: Some(TOKENIZER_FILE.into()),
            // (the checksum of its values: a resume tells tokenizers apart by it where the file does not read)
            params: serde_json::json!({
                "patch": self.patch, "scale": self.scale, "whiten": self.whiten, "fit": fit,
                "crc32c": format!("{:08x}", self.values_crc()),
            }),
        }
    }

    /// A checksum of what decodes bits (the values, not the file's bytes: one tokenizer saved twice
    /// compares equal).
    pub fn values_crc(&self) -> u32 {
        let mut h = crc32c::crc32c(&[self.patch as u64, self.d as u64].map(u64::to_le_bytes).concat());
        for v in [&self.mean, &self.basis, &self.sigma, &vec![self.scale, self.whiten]] {
            h = crc32c::crc32c_append(h, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        }
        h
    }

    /// Write `mean`, `basis` and the settings as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mean: Vec<u8> = self.mean.iter().flat_map(|x| x.to_le_bytes()).collect();
        let basis: Vec<u8> = self.basis.iter().flat_map(|x| x.to_le_bytes()).collect();
        let p_len = self.patch_len();
        let sigma: Vec<u8> = self.sigma.iter().flat_map(|x| x.to_le_bytes()).collect();
        let tensors = [
            ("basis", TensorView::new(Dtype::F32, vec![self.d, p_len], &basis).expect("shape matches data")),
            ("mean", TensorView::new(Dtype::F32, vec![p_len], &mean).expect("shape matches data")),
            ("sigma", TensorView::new(Dtype::F32, vec![self.d], &sigma).expect("shape matches data")),
        ];
        let meta: HashMap<String, String> = [
            ("name".to_string(), TOKENIZER_NAME.to_string()),
            ("patch".to_string(), self.patch.to_string()),
            ("d".to_string(), self.d.to_string()),
            ("scale".to_string(), format!("{:e}", self.scale)),
            ("whiten".to_string(), format!("{:e}", self.whiten)),
        ]
        .into();
        let bytes =
            safetensors::serialize(tensors, Some(meta)).map_err(|e| DataError::write(path, file_format(), e))?;
        crate::manifest::write_atomic(path, &sorted_header(bytes))
    }

    pub fn load(path: &Path) -> Result<PatchTokenizer> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let bad = |what: String| DataError::unreadable(path, file_format(), what);
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("metadata key `{k}` missing")));
        if get("name")? != TOKENIZER_NAME {
            return Err(bad(format!("metadata `name` is `{}`, expected `{TOKENIZER_NAME}`", get("name")?)));
        }
        let num = |k: &str| get(k)?.parse::<f64>().map_err(|_| bad(format!("metadata `{k}` is not a number")));
        let count = |k: &str| {
            let v = num(k)?;
            match v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
                true => Ok(v as usize),
                false => Err(bad(format!("metadata `{k}` is {v}: expected a whole number"))),
            }
        };
        let (patch, d) = (count("patch")?, count("d")?);
        let p_len = patch_len(patch, d).map_err(|what| bad(format!("metadata: {what}")))?;
        // (`fit` and `calibrate` make a positive scale and a whitening of 0 to 1: other values encode
        // images as NaN or infinite latents)
        let (scale, whiten) = (num("scale")? as f32, num("whiten")? as f32);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(bad(format!("metadata `scale` is {scale}: expected a finite number above 0")));
        }
        if !(0.0..=1.0).contains(&whiten) {
            return Err(bad(format!("metadata `whiten` is {whiten}: expected 0 to 1")));
        }
        let tensor = |name: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape.as_slice() {
                return Err(bad(format!(
                    "tensor `{name}`: expected f32 {shape:?}, found {:?} {:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            match v.iter().position(|x| !x.is_finite()) {
                Some(i) => Err(bad(format!("tensor `{name}`: value {i} is {}: expected finite values", v[i]))),
                None => Ok(v),
            }
        };
        Ok(PatchTokenizer {
            patch,
            d,
            mean: tensor("mean", vec![p_len])?,
            basis: tensor("basis", vec![d, p_len])?,
            sigma: tensor("sigma", vec![d])?,
            scale,
            whiten,
        })
    }
}

/// The built-in tokenizer of the dataset in `dir` (manifest `m`), if it has one, checked against the
/// manifest: another dataset's file put in its place would fail to decode these bits, or draw garbage.
pub fn of_dataset(dir: &Path, m: &Manifest) -> Result<Option<PatchTokenizer>> {
    let Some(f) = m.tokenizer.file.as_deref().filter(|_| m.tokenizer.name == TOKENIZER_NAME) else { return Ok(None) };
    let path = dir.join(f);
    let tok = PatchTokenizer::load(&path)?;
    let patch = m.tokenizer.params.get("patch").and_then(|p| p.as_u64());
    if tok.d != m.d as usize || patch.is_some_and(|p| p != tok.patch as u64) {
        return Err(DataError::Config(format!(
            "{}: a tokenizer of d = {} and {} px patches, where the dataset's bits have d = {}{}: another dataset's \
             tokenizer?",
            path.display(),
            tok.d,
            tok.patch,
            m.d,
            patch.map_or(String::new(), |p| format!(" from {p} px patches"))
        )));
    }
    // (another fit of the same shape: the checksum the manifest records, where it records one)
    if let Some(recorded) = recorded_crc(m).filter(|&c| c != format!("{:08x}", tok.values_crc())) {
        return Err(DataError::Config(format!(
            "{}: not the tokenizer the dataset's bits were made with (its values' checksum is {:08x}, the \
             manifest records {recorded}): another dataset's tokenizer?",
            path.display(),
            tok.values_crc()
        )));
    }
    Ok(Some(tok))
}

/// What a dataset's bits were made with, as one string a checkpoint's position keeps: the tokenizer's
/// name; its file and the file's checksum where the folder keeps one (the built-in tokenizer's taken
/// over its values, as [`same_tokenizer`] compares it), from the manifest's record of it
/// (`tokenizer.params.crc32c`, written since 2026-12-06) where the file does not read (training does
/// not need it), else `unread`; and a VAE checkpoint its `params.ckpt` names. Compare two with
/// [`same_identity`].
pub fn identity(dir: &Path, m: &Manifest) -> String {
    let mut id = m.tokenizer.name.clone();
    if let Some(f) = &m.tokenizer.file {
        let path = dir.join(f);
        let crc = match m.tokenizer.name == TOKENIZER_NAME {
            true => PatchTokenizer::load(&path).map(|t| t.values_crc()),
            false => std::fs::read(&path).map(|b| crc32c::crc32c(&b)).map_err(|e| DataError::io(&path, e)),
        };
        match (crc, recorded_crc(m)) {
            (Ok(crc), _) => id.push_str(&format!(" {f} crc32c {crc:08x}")),
            (Err(_), Some(crc)) => id.push_str(&format!(" {f} crc32c {crc}")),
            (Err(_), None) => id.push_str(&format!(" {f} unread")),
        }
    }
    if let Some(ckpt) = m.tokenizer.params.get("ckpt").and_then(|c| c.as_str()) {
        id.push_str(&format!(" ckpt {ckpt}"));
    }
    id
}

/// The checksum of the tokenizer's values the manifest records (`tokenizer.params.crc32c`), if any.
fn recorded_crc(m: &Manifest) -> Option<&str> {
    m.tokenizer.params.get("crc32c").and_then(|c| c.as_str())
}

/// Whether two [`identity`] strings name one tokenizer, by what both tell: the name; the checksum
/// where both have one (not the file's name: one tokenizer may be saved under two); the VAE checkpoint
/// where both name one. A file that did not read and that the manifest has no record of compares by
/// name alone.
pub fn same_identity(a: &str, b: &str) -> bool {
    let after = |id: &str, key: &str| -> Option<String> {
        let at = id.find(&format!(" {key} "))?;
        let rest = &id[at + key.len() + 2..];
        Some(match key {
            "ckpt" => rest.to_string(),
            _ => rest.split_whitespace().next()?.to_string(),
        })
    };
    // (the name: what comes before the file's part, `FILE crc32c X` or `FILE unread`, and the checkpoint's)
    let name = |id: &str| -> String {
        let head = id.split(" ckpt ").next().unwrap_or(id);
        let head = head.split(" crc32c ").next().unwrap_or(head);
        let head = head.strip_suffix(" unread").unwrap_or(head);
        match head.len() < id.split(" ckpt ").next().unwrap_or(id).len() {
            true => head.rsplit_once(' ').map_or(head, |(n, _)| n).to_string(),
            false => head.to_string(),
        }
    };
    let both = |key: &str| match (after(a, key), after(b, key)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    name(a) == name(b) && both("crc32c") && after(a, "ckpt") == after(b, "ckpt")
}

/// Whether two datasets (each a folder and its manifest) carry bits of one tokenizer, by what both
/// tell ([`same_identity`] of their [`identity`]): the same name; where both keep its file, the same
/// file (the built-in tokenizer by value: a file written before its header was sorted holds the same
/// tokenizer in other bytes; any other by bytes), a file that does not read by the checksum its
/// manifest records (training does not need the file), a file on one side only by the name alone;
/// the same VAE checkpoint, or none on either side.
pub fn same_tokenizer(a: (&Path, &Manifest), b: (&Path, &Manifest)) -> bool {
    same_identity(&identity(a.0, a.1), &identity(b.0, b.1))
}

/// Patch coordinates `(py, px)` in row-major order; errors unless the image tiles exactly.
fn patch_grid(img: &Image, p: usize) -> Result<impl Iterator<Item = (usize, usize)>> {
    if img.h == 0 || img.w == 0 || !img.h.is_multiple_of(p) || !img.w.is_multiple_of(p) {
        return Err(DataError::Config(format!(
            "tokenizer: image {}×{} does not tile into {p}×{p} patches",
            img.h, img.w
        )));
    }
    let (gh, gw) = (img.h / p, img.w / p);
    Ok((0..gh).flat_map(move |y| (0..gw).map(move |x| (y, x))))
}

fn extract_patch(img: &Image, p: usize, py: usize, px: usize, out: &mut [f32]) {
    let n = img.h * img.w;
    for c in 0..3 {
        for y in 0..p {
            let src = c * n + (py * p + y) * img.w + px * p;
            out[(c * p + y) * p..(c * p + y + 1) * p].copy_from_slice(&img.data[src..src + p]);
        }
    }
}

/// A safetensors file with its header's keys in sorted order: `safetensors::serialize` writes the
/// metadata from a `HashMap`, whose order changes from run to run, so the same tokenizer was written
/// as other bytes each time. The tensors' offsets are relative to the data, so only the header moves.
fn sorted_header(bytes: Vec<u8>) -> Vec<u8> {
    use std::collections::BTreeMap;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte header length")) as usize;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors wrote a JSON header");
    if let Some(serde_json::Value::Object(meta)) = header.get("__metadata__") {
        let sorted: BTreeMap<String, serde_json::Value> = meta.clone().into_iter().collect();
        header.insert("__metadata__".into(), serde_json::to_value(sorted).expect("strings serialize"));
    }
    let mut text = serde_json::to_string(&header).expect("the header serializes");
    while !text.len().is_multiple_of(8) {
        text.push(' '); // the data starts 8-byte aligned, as safetensors pads it
    }
    [&(text.len() as u64).to_le_bytes()[..], text.as_bytes(), &bytes[8 + n..]].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient_image(h: usize, w: usize, k: usize) -> Image {
        let mut img = Image::new(h, w);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = ((x * (c + 1) + y * (k + 1)) as f32 / (h + w) as f32).sin();
                    img.data[(c * h + y) * w + x] = v;
                }
            }
        }
        img
    }

    /// A tokenizer file whose metadata gives a patch and d no tokenizer can have is refused, naming the
    /// file and the key, as `fit` refuses them.
    #[test]
    fn a_tokenizer_file_of_impossible_sizes_is_refused() {
        let imgs: Vec<_> = (0..2).map(|k| gradient_image(8, 12, k)).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.safetensors");
        PatchTokenizer::fit(&imgs, 2, 12).unwrap().save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // (the header's length stays: one digit for another)
        for (from, to, says) in [
            ("\"patch\":\"2\"", "\"patch\":\"0\"", "the patch side must be 1 to 64 pixels, found 0"),
            ("\"d\":\"12\"", "\"d\":\"99\"", "d = 99 must be in 1..=12"),
            ("\"d\":\"12\"", "\"d\":\"-1\"", "metadata `d` is -1: expected a whole number"),
            ("\"whiten\":\"0e0\"", "\"whiten\":\"2e0\"", "metadata `whiten` is 2: expected 0 to 1"),
        ] {
            let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect(from);
            let mut edited = bytes.clone();
            edited[at..at + from.len()].copy_from_slice(to.as_bytes());
            let bad = dir.path().join("bad.safetensors");
            std::fs::write(&bad, edited).unwrap();
            let e = PatchTokenizer::load(&bad).expect_err(to).to_string();
            assert!(e.contains("bad.safetensors") && e.contains(says), "{e}");
        }
        assert!(PatchTokenizer::fit(&imgs, 65, 12).expect_err("a patch too large").to_string().contains("1 to 64"));
    }

    #[test]
    fn basis_is_orthonormal_and_full_rank_reconstruction_is_exact() {
        let imgs: Vec<_> = (0..6).map(|k| gradient_image(8, 12, k)).collect();
        let tok = PatchTokenizer::fit(&imgs, 2, 12).unwrap();
        for a in 0..12 {
            for b in 0..12 {
                let dot: f32 = (0..12).map(|i| tok.basis[a * 12 + i] * tok.basis[b * 12 + i]).sum();
                assert!((dot - if a == b { 1.0 } else { 0.0 }).abs() < 1e-4, "rows {a},{b}: {dot}");
            }
        }
        let lat = tok.encode(&imgs[2]).unwrap();
        let back = tok.decode(&lat, 4, 6);
        assert!(psnr(&imgs[2], &back) > 80.0, "full-rank PCA must reconstruct exactly");
    }

    #[test]
    fn save_load_round_trip_and_bad_file() {
        let imgs: Vec<_> = (0..3).map(|k| gradient_image(8, 8, k)).collect();
        let tok = PatchTokenizer::fit(&imgs, 4, 16).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKENIZER_FILE);
        tok.save(&path).unwrap();
        assert_eq!(PatchTokenizer::load(&path).unwrap(), tok);
        // the same bytes every time (the metadata's order no longer follows a HashMap's)
        let first = std::fs::read(&path).unwrap();
        for _ in 0..4 {
            tok.save(&path).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), first);
        }
        std::fs::write(&path, b"garbage").unwrap();
        let e = PatchTokenizer::load(&path).unwrap_err().to_string();
        assert!(e.contains("tokenizer.safetensors: not a readable patch-pca-bsq tokenizer (safetensors): "), "{e}");
        assert!(!e.contains("Arrow"), "{e}");
    }

    /// Two datasets share a tokenizer by name and file: the built-in one by value (its header written in
    /// another order is the same tokenizer), any other by bytes, a file that does not read by its record;
    /// a file on one side only compares by name.
    #[test]
    fn datasets_share_a_tokenizer_by_name_and_file() {
        let imgs: Vec<_> = (0..3).map(|k| gradient_image(8, 8, k)).collect();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let tok = PatchTokenizer::fit(&imgs, 4, 16).unwrap();
        tok.save(&dirs[0].path().join(TOKENIZER_FILE)).unwrap();
        // the same tokenizer in other bytes: its header padded (as a header in another order would be)
        let bytes = std::fs::read(dirs[0].path().join(TOKENIZER_FILE)).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let padded = [&(n as u64 + 8).to_le_bytes()[..], &bytes[8..8 + n], b"        ", &bytes[8 + n..]].concat();
        std::fs::write(dirs[1].path().join(TOKENIZER_FILE), padded).unwrap();
        PatchTokenizer::fit(&imgs[1..], 4, 16).unwrap().save(&dirs[2].path().join(TOKENIZER_FILE)).unwrap();
        let manifest = |name: &str, file: Option<&str>| -> Manifest {
            let tokenizer = serde_json::json!({ "name": name, "file": file });
            let mut m = serde_json::json!({
                "format": "infinity-bits", "format_version": 1, "d": 16, "bit_order": "", "tokenizer": tokenizer,
                "conditions": {}, "latent": null, "schedules": [], "shards": [], "total_rows": 0, "created_by": ""
            });
            m["conditions"] = serde_json::to_value(crate::manifest::Conditions::default()).unwrap();
            serde_json::from_value(m).unwrap()
        };
        let ours = manifest(TOKENIZER_NAME, Some(TOKENIZER_FILE));
        let at = |i: usize| dirs[i].path();
        assert!(same_tokenizer((at(0), &ours), (at(1), &ours)), "the same tokenizer by value");
        assert!(!same_tokenizer((at(0), &ours), (at(2), &ours)), "another fit");
        let other = manifest("bsq-vae-d16", Some(TOKENIZER_FILE));
        assert!(!same_tokenizer((at(0), &other), (at(1), &other)), "other tokenizers compare by bytes");
        assert!(same_tokenizer((at(0), &other), (at(0), &other)));
        let vae = manifest("bsq-vae-d16", None);
        assert!(same_tokenizer((at(0), &vae), (at(2), &vae)), "no files: the name alone");
        assert!(!same_tokenizer((at(0), &ours), (at(0), &vae)), "another name");
        assert!(same_tokenizer((at(0), &other), (at(0), &vae)), "a file on one side only: the name alone");
        // a file that does not read (training does not need it): by the checksum its manifest records
        let mut gone = manifest(TOKENIZER_NAME, Some("gone.safetensors"));
        gone.tokenizer.params = serde_json::json!({ "crc32c": format!("{:08x}", tok.values_crc()) });
        assert!(same_tokenizer((at(0), &ours), (at(1), &gone)), "the record of the same tokenizer");
        assert!(!same_tokenizer((at(2), &ours), (at(1), &gone)), "the record of another fit");
    }

    /// Identities compare by what both sides tell: the checksum (not the file's name), else the name.
    #[test]
    fn identities_compare_by_what_both_tell() {
        let read = "patch-pca-bsq tokenizer.safetensors crc32c 0000aaaa";
        assert!(same_identity(read, "patch-pca-bsq other-name.safetensors crc32c 0000aaaa"));
        assert!(!same_identity(read, "patch-pca-bsq tokenizer.safetensors crc32c 0000bbbb"));
        // a file that did not read, of a manifest without a record of it: by name
        assert!(same_identity(read, "patch-pca-bsq tokenizer.safetensors unread"));
        assert!(!same_identity(read, "bsq-vae-d16 tokenizer.safetensors crc32c 0000aaaa"));
        assert!(!same_identity("bsq-vae-d16 ckpt /a b.pt", "bsq-vae-d16 ckpt /a c.pt"));
        assert!(same_identity("bsq-vae-d16 ckpt /a b.pt", "bsq-vae-d16 ckpt /a b.pt"));
        assert!(!same_identity("bsq-vae-d16 ckpt /a b.pt", "bsq-vae-d16"), "a checkpoint on one side only");
        assert!(!same_identity("my vae", "my other-vae"), "names compare whole");
        assert!(same_identity("my vae t.bin crc32c 0000aaaa", "my vae u.bin unread"));
    }
}
