//! Multi-scale BSQ with bitwise self-correction for a whole batch on the device (twin of
//! `bsq::self_correct` with `bsq::keyed_flips`): labels and teacher-forcing inputs of every sample
//! without a host round trip. Where a latent plane fits in shared memory (up to about 128 × 128 on
//! sm_90), one launch does every scale: a block per (sample, channel) plane (bsq.cu
//! `self_correct_planes_f32`). Otherwise two launches per scale: one forms the running sum of the
//! earlier scales' codes while it area-pools the residual and quantises it (labels and codes), the
//! other samples the running sum as the scale's token-major input. Both give the same labels and
//! inputs bit for bit (same windows, same summation orders).
//!
//! Dims: `B` samples, `d` bits, `(H, W)` the last scale, `L` tokens of the schedule, `n0` tokens of the
//! first scale.

use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use super::device::{elementwise, Arg, CudaError, Device};
use crate::bsq::num_tokens;

/// Device outputs of [`self_correct_batch`]: every element is written by each call given them.
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

/// Which kernels [`self_correct_batch`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BsqPath {
    /// One launch when a plane fits in shared memory, per scale otherwise.
    Auto,
    /// `self_correct_planes_f32` (an error when a plane does not fit).
    Planes,
    /// Two launches per scale through global scratch.
    PerScale,
}

/// Device state a caller may keep across calls (the GPU model makes one per micro-step): the schedule
/// as the one-launch kernel reads it, and the per-scale path's
/// running sums `[B, d, H, W]` and codes (two of each: a scale reads the previous scale's and writes
/// its own), allocated when that path first runs.
pub struct BsqScratch {
    pub path: BsqPath,
    full: usize,
    /// The scales last uploaded and their `[K][2]` device copy.
    schedule: Option<(Schedule, CudaSlice<i32>)>,
    per_scale: Option<PerScaleBuffers>,
}

type Schedule = Vec<(usize, usize)>;

/// The per-scale path's `[B, d, H, W]` buffers.
struct PerScaleBuffers {
    sums: [CudaSlice<f32>; 2],
    codes: [CudaSlice<f32>; 2],
}

impl BsqScratch {
    /// Scratch for `b` latents of `d` channels up to `(hh, ww)`; nothing is allocated yet.
    pub fn new(b: usize, d: usize, (hh, ww): (usize, usize)) -> BsqScratch {
        BsqScratch { path: BsqPath::Auto, full: b * d * hh * ww, schedule: None, per_scale: None }
    }

    /// `scales` as `[K][2]` device ints, uploaded when the schedule changes.
    fn schedule(&mut self, dev: &Device, scales: &[(usize, usize)]) -> Result<&CudaSlice<i32>, CudaError> {
        if self.schedule.as_ref().is_none_or(|(s, _)| s != scales) {
            let flat: Vec<i32> = scales.iter().flat_map(|&(h, w)| [h as i32, w as i32]).collect();
            self.schedule = Some((scales.to_vec(), dev.stream.clone_htod(&flat)?));
        }
        Ok(&self.schedule.as_ref().expect("uploaded above").1)
    }
}

/// Static shared memory of `self_correct_planes_f32` (common.cuh's `block_sum`: 33 floats), rounded
/// up: the dynamic part must leave room for it.
const STATIC_SMEM: usize = 256;

/// The sizes `self_correct_planes_f32` keeps for all but the last scale: the most codes (`qmax`) and
/// the most rows (`umax`).
fn earlier_scales(scales: &[(usize, usize)]) -> (usize, usize) {
    let earlier = &scales[..scales.len() - 1];
    (earlier.iter().map(|&(h, w)| h * w).max().unwrap_or(0), earlier.iter().map(|&(h, _)| h).max().unwrap_or(0))
}

/// Dynamic shared memory of `self_correct_planes_f32` for `scales` (the last one `(H, W)`), as the
/// kernel lays it out: four tables of 16-byte taps and two of 8-byte windows over H rows and W
/// columns, the latent plane and the running sum (H·W floats each), a scale's rows interpolated to
/// width W (`umax`·W floats) and its codes (`qmax` bytes).
pub fn planes_smem_bytes(scales: &[(usize, usize)]) -> usize {
    let (hh, ww) = *scales.last().expect("non-empty schedule");
    let (qmax, umax) = earlier_scales(scales);
    40 * (hh + ww) + 4 * (2 * hh * ww + umax * ww) + qmax
}

/// Self-correct `latent [B, d, H, W]` (`(H, W)` = the last scale) with the flips of `keys [B]` (one per
/// sample, `bsq::keyed_flips`' key), `p_max` and `apply_layers` as in upstream's
/// `BitwiseSelfCorrection`. `p_max = 0` is plain multi-scale BSQ. `scratch.path` picks the kernels.
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
    assert!(scratch.full >= full, "self_correct_batch: scratch made for a smaller batch or schedule");
    let (l, n0) = (num_tokens(scales), scales[0].0 * scales[0].1);
    assert!(
        out.gt_bits.len() >= b * l * d && out.x_wo_prefix.len() >= b * (l - n0) * d,
        "self_correct_batch: outputs made for a smaller batch or schedule"
    );
    let kmax = crate::bsq::flip_kmax(p_max);
    let bytes = planes_smem_bytes(scales);
    // the kernel's tables are sized by the last scale: every scale must be at most as large
    let optin = dev.ctx.attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
    let fits = bytes + STATIC_SMEM <= optin && scales.iter().all(|&(h, w)| h <= hh && w <= ww);
    match scratch.path {
        BsqPath::Auto | BsqPath::Planes if fits => {
            planes(dev, (latent, keys), (b, d, scales), (kmax, apply_layers), out, scratch, bytes)
        }
        BsqPath::Planes => Err(CudaError::Driver(format!(
            "self_correct_planes_f32: schedule {scales:?} does not fit: it needs every scale within the last \
             and {bytes} bytes of shared memory per block"
        ))),
        BsqPath::Auto | BsqPath::PerScale => {
            per_scale(dev, (latent, keys), (b, d, scales), (kmax, apply_layers), out, scratch)
        }
    }
}

/// Every scale in one launch: a block of 256 threads per (sample, channel) plane.
fn planes(
    dev: &Device,
    (latent, keys): (&CudaSlice<f32>, &CudaSlice<u64>),
    (b, d, scales): (usize, usize, &[(usize, usize)]),
    (kmax, apply_layers): (usize, usize),
    out: &mut BsqBatch,
    scratch: &mut BsqScratch,
    bytes: usize,
) -> Result<(), CudaError> {
    let (hh, ww) = *scales.last().expect("checked by the caller");
    let (qmax, umax) = earlier_scales(scales);
    dev.function_with_shared("bsq.cu", "self_correct_planes_f32", bytes, STATIC_SMEM)?;
    let s = &dev.stream;
    let i = Arg::int;
    let args = [
        dev.arg(latent),
        Arg::Ptr(scratch.schedule(dev, scales)?.device_ptr(s).0),
        i(scales.len()),
        i(b * d),
        i(hh),
        i(ww),
        i(qmax),
        i(umax),
        Arg::Ptr(keys.device_ptr(s).0),
        i(kmax),
        i(apply_layers.min(scales.len())), // only whether a scale is below it matters
        Arg::Ptr(out.gt_bits.device_ptr_mut(s).0),
        i(num_tokens(scales)),
        dev.arg_mut(&mut out.x_wo_prefix),
        i(d),
    ];
    let cfg = LaunchConfig {
        grid_dim: ((b * d).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: bytes as u32,
    };
    // SAFETY: self_correct_planes_f32(f, sched, K, planes, H, W, qmax, umax, keys, kmax, apply_layers, gt,
    // L, x, d): latent [B·d, H, W], sched [K][2], gt [B, L, d] and x [B, L − n0, d] (sizes checked by the
    // caller); shared memory as planes_smem_bytes lays it out.
    unsafe { dev.launch("bsq.cu", "self_correct_planes_f32", cfg, &args) }
}

/// Two launches per scale through the scratch's running sums and codes.
fn per_scale(
    dev: &Device,
    (latent, keys): (&CudaSlice<f32>, &CudaSlice<u64>),
    (b, d, scales): (usize, usize, &[(usize, usize)]),
    (kmax_all, apply_layers): (usize, usize),
    out: &mut BsqBatch,
    scratch: &mut BsqScratch,
) -> Result<(), CudaError> {
    let (hh, ww) = *scales.last().expect("checked by the caller");
    let s = &dev.stream;
    if scratch.per_scale.is_none() {
        let full = scratch.full;
        let (sums, codes) =
            ([s.alloc_zeros(full)?, s.alloc_zeros(full)?], [s.alloc_zeros(full)?, s.alloc_zeros(full)?]);
        scratch.per_scale = Some(PerScaleBuffers { sums, codes });
    }
    let PerScaleBuffers { sums, codes } = scratch.per_scale.as_mut().expect("allocated above");
    let (l, n0) = (num_tokens(scales), scales[0].0 * scales[0].1);
    let i = Arg::int;
    let (bi, di, hi, wi, bd) = (i(b), i(d), i(hh), i(ww), i(b * d));
    let (li, lx) = (i(l), i(l - n0));
    let null = Arg::Ptr(0);
    let mut tok0 = 0usize;
    for (si, &(h, w)) in scales.iter().enumerate() {
        let n = h * w;
        let (hs, ws) = (i(h), i(w));
        let kmax = i(if si < apply_layers { kmax_all } else { 0 });
        // this scale writes S_s and q_s into slot `cur`, reading S_{s−1} and q_{s−1} from the other:
        // S_0 = 0 is never stored, S_1 = up(q_0) has no S_0 to read
        let (cur, prev) = (si % 2, (si + 1) % 2);
        let (ph, pw) = if si > 0 { scales[si - 1] } else { (1, 1) };
        let old = if si >= 2 { dev.arg(&sums[prev]) } else { null };
        let prev_codes = if si >= 1 { dev.arg(&codes[prev]) } else { null };
        let sum_out = dev.arg_mut(&mut sums[cur]);
        // a thread, a warp or a block per output value, by the size of its window
        let (name, cfg) = match hh.div_ceil(h) * ww.div_ceil(w) {
            0..16 => ("residual_codes_f32", elementwise(b * d * n)),
            16..1024 => ("residual_codes_warp_f32", elementwise(32 * b * d * n)),
            _ => ("residual_codes_block_f32", per_block(b * d * n)),
        };
        let (keys, gt) = (Arg::Ptr(keys.device_ptr(s).0), Arg::Ptr(out.gt_bits.device_ptr_mut(s).0));
        let q = dev.arg_mut(&mut codes[cur]);
        let pooling = [dev.arg(latent), old, prev_codes, sum_out, i(ph), i(pw), bd, hi, wi, hs, ws];
        let labels = [keys, i(si), kmax, gt, li, i(tok0), q, di];
        // SAFETY: residual_codes_*(f, old, prev, out, ph, pw, bd, H, W, h, w, keys, scale, kmax, gt, l,
        // tok0, q, d): sums are [B·d, H, W], codes hold B·d·h·w ≤ B·d·H·W values, gt is [B, L, d] with
        // tok0 + n ≤ L.
        unsafe { dev.launch("bsq.cu", name, cfg, &[&pooling[..], &labels[..]].concat()) }?;
        if si > 0 {
            let x = dev.arg_mut(&mut out.x_wo_prefix);
            let args = [dev.arg(&sums[cur]), x, bi, di, hi, wi, hs, ws, lx, i(tok0 - n0)];
            // SAFETY: to_tokens_f32(sum, x, b, d, H, W, h, w, lx, tok0); x is [B, L − n0, d] and the
            // scale's tokens fit.
            unsafe { dev.launch("bsq.cu", "to_tokens_f32", elementwise(b * n * d), &args) }?;
        }
        tok0 += n;
    }
    Ok(())
}

/// Twin of [`crate::patchify::unshuffle_tokens`]: `src [B, rows, d]` on the tokenizer's schedule (the
/// labels or teacher-forcing inputs of [`self_correct_batch`]) → `dst [B, rows/4, 4d]` transformer
/// tokens of the transformer scales `scales[first..]`, a launch per scale. `f32` or `u8` values.
pub fn unshuffle_tokens<T: Unshuffled>(
    dev: &Device,
    src: &CudaSlice<T>,
    dst: &mut CudaSlice<T>,
    (b, d): (usize, usize),
    scales: &[(usize, usize)],
    first: usize,
) -> Result<(), CudaError> {
    let per: usize = scales[first..].iter().map(|&(h, w)| 4 * h * w * d).sum();
    assert!(src.len() >= b * per && dst.len() >= b * per, "unshuffle_tokens: src and dst are [B, rows, d]");
    let s = &dev.stream;
    let mut off = 0;
    for &(h, w) in &scales[first..] {
        let n = 4 * h * w * d;
        let args = [
            Arg::Ptr(src.device_ptr(s).0),
            Arg::Ptr(dst.device_ptr_mut(s).0),
            Arg::int(b),
            Arg::long(per),
            Arg::long(off),
            Arg::int(h),
            Arg::int(w),
            Arg::int(d),
        ];
        // SAFETY: unshuffle_scale_*(src, dst, b, per, off, h, w, d): both hold b·per values (checked
        // above) and the scale's off + n ≤ per.
        unsafe { dev.launch("bsq.cu", T::KERNEL, elementwise(b * n), &args) }?;
        off += n;
    }
    Ok(())
}

/// The element types [`unshuffle_tokens`] has a kernel for.
pub trait Unshuffled: cudarc::driver::DeviceRepr {
    const KERNEL: &'static str;
}

impl Unshuffled for f32 {
    const KERNEL: &'static str = "unshuffle_scale_f32";
}

impl Unshuffled for u8 {
    const KERNEL: &'static str = "unshuffle_scale_u8";
}

/// One 256-thread block per item (grid-stride beyond 65 535 blocks).
fn per_block(items: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (items.clamp(1, 65_535) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Host-buffer entry point for the equivalence test and benchmarks: `(gt_bits [B, L, d],
/// x_wo_prefix [B, L − n0, d])`.
#[allow(clippy::too_many_arguments)]
pub fn self_correct_batch_host(
    dev: &Device,
    latent: &[f32],
    keys: &[u64],
    d: usize,
    scales: &[(usize, usize)],
    p_max: f64,
    apply_layers: usize,
    path: BsqPath,
) -> Result<(Vec<u8>, Vec<f32>), CudaError> {
    let b = keys.len();
    let s = &dev.stream;
    let (lat, k) = (s.clone_htod(latent)?, s.clone_htod(keys)?);
    let mut scratch = BsqScratch::new(b, d, *scales.last().expect("non-empty schedule"));
    scratch.path = path;
    let mut out = BsqBatch::new(dev, b, d, scales)?;
    self_correct_batch(dev, &lat, &k, b, d, scales, p_max, apply_layers, &mut out, &mut scratch)?;
    let n0 = scales[0].0 * scales[0].1;
    let mut x = s.clone_dtoh(&out.x_wo_prefix)?;
    x.truncate(b * (num_tokens(scales) - n0) * d);
    Ok((s.clone_dtoh(&out.gt_bits)?, x))
}
