//! Multi-scale BSQ with bitwise self-correction for a whole batch on the device (twin of
//! `bsq::self_correct` with `bsq::keyed_flips`): labels and teacher-forcing inputs of every sample
//! without a host round trip. Two launches per scale (bsq.cu): one forms the running sum of the
//! earlier scales' codes while it area-pools the residual and quantises it (labels and codes), the
//! other samples the running sum as the scale's token-major input.
//!
//! Dims: `B` samples, `d` bits, `(H, W)` the last scale, `L` tokens of the schedule, `n0` tokens of the
//! first scale.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use super::device::{elementwise, Arg, CudaError, Device};
use crate::bsq::num_tokens;

/// Device outputs of [`self_correct_batch`], allocated once and overwritten by every call.
pub struct BsqBatch {
    /// `[B, L, d]` labels (0/1).
    pub gt_bits: CudaSlice<u8>,
    /// `[B, L − n0, d]` teacher-forcing inputs of scales 1..K.
    pub x_wo_prefix: CudaSlice<f32>,
}

impl BsqBatch {
    pub fn new(dev: &Device, b: usize, d: usize, scales: &[(usize, usize)]) -> Result<BsqBatch, CudaError> {
        let (l, n0) = (num_tokens(scales), scales[0].0 * scales[0].1);
        let s = &dev.stream;
        Ok(BsqBatch { gt_bits: s.alloc_zeros(b * l * d)?, x_wo_prefix: s.alloc_zeros((b * (l - n0) * d).max(1))? })
    }
}

/// Reused device scratch, two of each (a scale reads the previous scale's and writes its own): the
/// running sum of codes `[B, d, H, W]` and a scale's codes `[B, d, h, w]`.
pub struct BsqScratch {
    sums: [CudaSlice<f32>; 2],
    codes: [CudaSlice<f32>; 2],
}

impl BsqScratch {
    pub fn new(dev: &Device, b: usize, d: usize, (hh, ww): (usize, usize)) -> Result<BsqScratch, CudaError> {
        let full = b * d * hh * ww;
        let s = &dev.stream;
        Ok(BsqScratch {
            sums: [s.alloc_zeros(full)?, s.alloc_zeros(full)?],
            codes: [s.alloc_zeros(full)?, s.alloc_zeros(full)?],
        })
    }
}

/// Self-correct `latent [B, d, H, W]` (`(H, W)` = the last scale) with the flips of `keys [B]` (one per
/// sample, `bsq::keyed_flips`' key), `p_max` and `apply_layers` as in upstream's
/// `BitwiseSelfCorrection`. `p_max = 0` is plain multi-scale BSQ.
#[allow(clippy::too_many_arguments)]
pub fn self_correct_batch(
    dev: &Device,
    latent: &CudaSlice<f32>,
    keys: &CudaSlice<u64>,
    b: usize,
    d: usize,
    scales: &[(usize, usize)],
    p_max: f64,
    apply_layers: usize,
    out: &mut BsqBatch,
    scratch: &mut BsqScratch,
) -> Result<(), CudaError> {
    let (hh, ww) = *scales.last().expect("self_correct_batch: empty schedule");
    let full = b * d * hh * ww;
    assert!(latent.len() == full && keys.len() == b, "self_correct_batch: latent [B, d, H, W], keys [B]");
    assert!(scratch.sums[0].len() >= full, "self_correct_batch: scratch made for a smaller batch or schedule");
    let (l, n0) = (num_tokens(scales), scales[0].0 * scales[0].1);
    assert!(
        out.gt_bits.len() >= b * l * d && out.x_wo_prefix.len() >= b * (l - n0) * d,
        "self_correct_batch: outputs made for a smaller batch or schedule"
    );
    let s = &dev.stream;
    let kmax_all = (100.0 * p_max).round() as i32;
    let i = Arg::int;
    let (bi, di, hi, wi, bd) = (i(b), i(d), i(hh), i(ww), i(b * d));
    let (li, lx) = (i(l), i(l - n0));
    let null = Arg::Ptr(0);
    let mut tok0 = 0usize;
    for (si, &(h, w)) in scales.iter().enumerate() {
        let n = h * w;
        let (hs, ws) = (i(h), i(w));
        let kmax = Arg::I32(if si < apply_layers { kmax_all } else { 0 });
        // this scale writes S_s and q_s into slot `cur`, reading S_{s−1} and q_{s−1} from the other:
        // S_0 = 0 is never stored, S_1 = up(q_0) has no S_0 to read
        let (cur, prev) = (si % 2, (si + 1) % 2);
        let (ph, pw) = if si > 0 { scales[si - 1] } else { (1, 1) };
        let old = if si >= 2 { dev.arg(&scratch.sums[prev]) } else { null };
        let prev_codes = if si >= 1 { dev.arg(&scratch.codes[prev]) } else { null };
        let sum_out = dev.arg_mut(&mut scratch.sums[cur]);
        // a thread, a warp or a block per output value, by the size of its window
        let (name, cfg) = match hh.div_ceil(h) * ww.div_ceil(w) {
            0..16 => ("residual_codes_f32", elementwise(b * d * n)),
            16..1024 => ("residual_codes_warp_f32", elementwise(32 * b * d * n)),
            _ => ("residual_codes_block_f32", per_block(b * d * n)),
        };
        let (keys, gt) = (Arg::Ptr(keys.device_ptr(s).0), Arg::Ptr(out.gt_bits.device_ptr_mut(s).0));
        let q = dev.arg_mut(&mut scratch.codes[cur]);
        let pooling = [dev.arg(latent), old, prev_codes, sum_out, i(ph), i(pw), bd, hi, wi, hs, ws];
        let codes = [keys, i(si), kmax, gt, li, i(tok0), q, di];
        // SAFETY: residual_codes_*(f, old, prev, out, ph, pw, bd, H, W, h, w, keys, scale, kmax, gt, l,
        // tok0, q, d): sums are [B·d, H, W], codes hold B·d·h·w ≤ B·d·H·W values, gt is [B, L, d] with
        // tok0 + n ≤ L.
        unsafe { dev.launch("bsq.cu", name, cfg, &[&pooling[..], &codes[..]].concat()) }?;
        if si > 0 {
            let x = dev.arg_mut(&mut out.x_wo_prefix);
            let args = [dev.arg(&scratch.sums[cur]), x, bi, di, hi, wi, hs, ws, lx, i(tok0 - n0)];
            // SAFETY: to_tokens_f32(sum, x, b, d, H, W, h, w, lx, tok0); x is [B, L − n0, d] and the
            // scale's tokens fit.
            unsafe { dev.launch("bsq.cu", "to_tokens_f32", elementwise(b * n * d), &args) }?;
        }
        tok0 += n;
    }
    Ok(())
}

/// One 256-thread block per item (grid-stride beyond 65 535 blocks).
fn per_block(items: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (items.clamp(1, 65_535) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Host-buffer entry point for the equivalence test and benchmarks: `(gt_bits [B, L, d],
/// x_wo_prefix [B, L − n0, d])`.
pub fn self_correct_batch_host(
    dev: &Device,
    latent: &[f32],
    keys: &[u64],
    d: usize,
    scales: &[(usize, usize)],
    p_max: f64,
    apply_layers: usize,
) -> Result<(Vec<u8>, Vec<f32>), CudaError> {
    let b = keys.len();
    let s = &dev.stream;
    let (lat, k) = (s.clone_htod(latent)?, s.clone_htod(keys)?);
    let mut scratch = BsqScratch::new(dev, b, d, *scales.last().expect("non-empty schedule"))?;
    let mut out = BsqBatch::new(dev, b, d, scales)?;
    self_correct_batch(dev, &lat, &k, b, d, scales, p_max, apply_layers, &mut out, &mut scratch)?;
    let n0 = scales[0].0 * scales[0].1;
    let mut x = s.clone_dtoh(&out.x_wo_prefix)?;
    x.truncate(b * (num_tokens(scales) - n0) * d);
    Ok((s.clone_dtoh(&out.gt_bits)?, x))
}
