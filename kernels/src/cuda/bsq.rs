//! Multi-scale BSQ with bitwise self-correction for a whole batch on the device (twin of
//! `bsq::self_correct` with `bsq::keyed_flips`): labels and teacher-forcing inputs of every sample
//! without a host round trip. Four launches per scale (bsq.cu): residual area-pooling, keyed
//! quantisation, bilinear accumulation of the codes, and the next scale's token-major input.
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

/// Reused device scratch: the running sum of codes `[B, d, H, W]`, a scale's residual and codes.
pub struct BsqScratch {
    sum: CudaSlice<f32>,
    r: CudaSlice<f32>,
    q: CudaSlice<f32>,
}

impl BsqScratch {
    pub fn new(dev: &Device, b: usize, d: usize, (hh, ww): (usize, usize)) -> Result<BsqScratch, CudaError> {
        let full = b * d * hh * ww;
        let s = &dev.stream;
        Ok(BsqScratch { sum: s.alloc_zeros(full)?, r: s.alloc_zeros(full)?, q: s.alloc_zeros(full)? })
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
    assert!(scratch.sum.len() >= full, "self_correct_batch: scratch made for a smaller batch or schedule");
    let (l, n0) = (num_tokens(scales), scales[0].0 * scales[0].1);
    assert!(
        out.gt_bits.len() >= b * l * d && out.x_wo_prefix.len() >= b * (l - n0) * d,
        "self_correct_batch: outputs made for a smaller batch or schedule"
    );
    let s = &dev.stream;
    s.memset_zeros(&mut scratch.sum)?;
    let kmax_all = (100.0 * p_max).round() as i32;
    let i = Arg::int;
    let (bi, di, hi, wi, bd) = (i(b), i(d), i(hh), i(ww), i(b * d));
    let (li, lx) = (i(l), i(l - n0));
    let mut tok0 = 0usize;
    for (si, &(h, w)) in scales.iter().enumerate() {
        let n = h * w;
        let (hs, ws) = (i(h), i(w));
        let kmax = Arg::I32(if si < apply_layers { kmax_all } else { 0 });
        // a thread, a warp or a block per output value, by the size of its window
        let (name, cfg) = match hh.div_ceil(h) * ww.div_ceil(w) {
            0..16 => ("residual_area_f32", elementwise(b * d * n)),
            16..1024 => ("residual_area_warp_f32", elementwise(32 * b * d * n)),
            _ => ("residual_area_block_f32", per_block(b * d * n)),
        };
        let args = [dev.arg(latent), dev.arg(&scratch.sum), dev.arg_mut(&mut scratch.r), bd, hi, wi, hs, ws];
        // SAFETY: residual_area_*(f, sum, r, bd, H, W, h, w); r holds B·d·h·w ≤ B·d·H·W values.
        unsafe { dev.launch("bsq.cu", name, cfg, &args) }?;
        let (keys, gt) = (Arg::Ptr(keys.device_ptr(s).0), Arg::Ptr(out.gt_bits.device_ptr_mut(s).0));
        let args = [dev.arg(&scratch.r), keys, i(si), kmax, gt, li, i(tok0), dev.arg_mut(&mut scratch.q), bi, di, i(n)];
        // SAFETY: quantize_keyed_f32(r, keys, scale, kmax, gt, l, tok0, q, b, d, n); gt is [B, L, d] and
        // tok0 + n ≤ L.
        unsafe { dev.launch("bsq.cu", "quantize_keyed_f32", elementwise(b * d * n), &args) }?;
        let args = [dev.arg(&scratch.q), dev.arg_mut(&mut scratch.sum), bd, hs, ws, hi, wi, Arg::I32(1)];
        // SAFETY: bilinear_resize_f32(src, dst, bc, sh, sw, dh, dw, accumulate) into the [B·d, H, W] sum.
        unsafe { dev.launch("bsq.cu", "bilinear_resize_f32", elementwise(full), &args) }?;
        if let Some(&(nh, nw)) = scales.get(si + 1) {
            let x = dev.arg_mut(&mut out.x_wo_prefix);
            let args = [dev.arg(&scratch.sum), x, bi, di, hi, wi, i(nh), i(nw), lx, i(tok0 + n - n0)];
            // SAFETY: to_tokens_f32(sum, x, b, d, H, W, h, w, lx, tok0); x is [B, L − n0, d] and the
            // scale's tokens fit.
            unsafe { dev.launch("bsq.cu", "to_tokens_f32", elementwise(b * nh * nw * d), &args) }?;
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
