//! Steps shared by every dataset builder (`synth`, `pack`): fitting the built-in tokenizer, turning an
//! image into a row (latent and bits), and writing rows made in parallel in a deterministic order.

use half::f16;
use infinity_kernels::bsq;
use rayon::prelude::*;

use crate::error::Result;
use crate::format;
use crate::schedule::ScaleSchedule;
use crate::tokenizer::{psnr, Image, PatchTokenizer};
use crate::writer::{DatasetWriter, RowData};

/// What fitting the tokenizer measured on its calibration images.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TokenizerFit {
    /// PSNR of the continuous latent (PCA only), dB.
    pub psnr_latent_db: f64,
    /// PSNR after multi-scale BSQ (what the bits carry), dB.
    pub psnr_bsq_db: f64,
    /// The images measured on.
    pub images: usize,
    /// Whether those were images the fit did not see (a pack's, of a folder larger than its fit sample);
    /// else the fit's own.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held_out: bool,
}

impl TokenizerFit {
    /// "N images not in the fit" / "the N images it was fitted on": what the PSNRs were measured on.
    pub fn measured_on(&self) -> String {
        let n = self.images;
        match (self.held_out, n) {
            (true, 1) => "1 image not in the fit".into(),
            (true, n) => format!("{n} images not in the fit"),
            (false, 1) => "the 1 image it was fitted on".into(),
            (false, n) => format!("the {n} images it was fitted on"),
        }
    }
}

/// Fit PCA on `images`, tune the latent scale on (up to 64 of) them, and measure both PSNRs on
/// `held_out` (images the fit did not see), or on `images` where none are given.
pub fn fit_tokenizer(
    images: &[(Image, ScaleSchedule)],
    held_out: &[(Image, ScaleSchedule)],
    patch: usize,
    d: usize,
) -> Result<(PatchTokenizer, TokenizerFit)> {
    let plain: Vec<Image> = images.iter().map(|(i, _)| i.clone()).collect();
    let mut tok = PatchTokenizer::fit(&plain, patch, d)?;
    let calib: Vec<(Image, Vec<(usize, usize)>)> = images.iter().take(64).map(|(i, s)| (i.clone(), s.hw())).collect();
    tok.calibrate(&calib)?;
    let fit = match held_out.is_empty() {
        true => measure_fit(&tok, images)?,
        false => TokenizerFit { held_out: true, ..measure_fit(&tok, held_out)? },
    };
    Ok((tok, fit))
}

/// PSNR of `tok` on `images`: continuous latent and after multi-scale BSQ.
pub fn measure_fit(tok: &PatchTokenizer, images: &[(Image, ScaleSchedule)]) -> Result<TokenizerFit> {
    let each: Vec<(f64, f64)> = images
        .par_iter()
        .map(|(img, sched)| {
            let (hh, ww) = sched.latent_hw();
            let latent = psnr(img, &tok.decode(&tok.encode(img)?, hh, ww));
            Ok((latent, psnr(img, &tok.round_trip(img, &sched.hw())?.0)))
        })
        .collect::<Result<_>>()?;
    // (summed in order: the figure does not depend on the thread count)
    let (latent_psnr, bsq_psnr) = each.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let n = images.len() as f64;
    Ok(TokenizerFit {
        psnr_latent_db: latent_psnr / n,
        psnr_bsq_db: bsq_psnr / n,
        images: images.len(),
        held_out: false,
    })
}

/// Latent (f16 bytes, `[d, H, W]`) and packed bits of one image. The bits are computed from the
/// f16-rounded latent, so a trainer that rebuilds bits from the stored latent gets the stored bits.
pub fn encode_row(tok: &PatchTokenizer, img: &Image, sched: &ScaleSchedule) -> Result<(Vec<u8>, Vec<u8>)> {
    let latent: Vec<f32> = tok.encode(img)?.into_iter().map(|x| f16::from_f32(x).to_f32()).collect();
    let enc = bsq::encode_multiscale(&latent, tok.d, &sched.hw());
    let mut packed = Vec::new();
    format::pack_bits(&enc.bits, tok.d, &mut packed);
    let latent_bytes = latent.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
    Ok((latent_bytes, packed))
}

/// Make rows `0..n` with `make` on all cores, chunk by chunk, and write them in id order (`None`: no
/// row for that id). `progress` is called after each chunk with the ids done so far.
pub fn write_parallel(
    writer: &mut DatasetWriter,
    n: u64,
    make: impl Fn(u64) -> Result<Option<RowData>> + Sync,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    const CHUNK: u64 = 2048;
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        // (all made, then the first failure in id order: the one a run names must not depend on which
        // thread failed first)
        let made: Vec<Result<Option<RowData>>> = (start..end).into_par_iter().map(&make).collect();
        let rows = made.into_iter().collect::<Result<Vec<_>>>()?;
        for row in rows.into_iter().flatten() {
            writer.push(row)?;
        }
        progress(end);
        start = end;
    }
    Ok(())
}
